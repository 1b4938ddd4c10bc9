//! The benchmark program (issue 5); filled in by its issue.

fn main() {
    eprintln!("cohort-bench: not written yet");
    std::process::exit(1);
}
