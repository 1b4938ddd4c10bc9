//! `sqlx::migrate!()` embeds `migrations/` at compile time; without this hint cargo would
//! not rebuild when only a migration file is added or changed.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
