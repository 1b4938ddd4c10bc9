//! The identifiers of a set of profiles, as the store looks them up, and the approximate
//! set of those a long transaction has written.

use fastbloom::BloomFilter;
use foldhash::{HashSet, HashSetExt};

use super::Profile;

/// Every distinct identifier of a set of profiles: what the store must look up before
/// [`Upserter`] can decide.
#[derive(Debug, Default)]
pub struct IdentifierKeys<'a> {
    /// Distinct external ids.
    pub external_ids: Vec<&'a str>,
    /// Labels of the distinct aliases (parallel to `alias_names`).
    pub alias_labels: Vec<&'a str>,
    /// Names of the distinct aliases (parallel to `alias_labels`).
    pub alias_names: Vec<&'a str>,
    /// Distinct device ids.
    pub device_ids: Vec<&'a str>,
}

/// One identifier, borrowed: the key of [`WrittenIdentifiers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentifierKey<'a> {
    /// An external id.
    ExternalId(&'a str),
    /// An alias.
    Alias {
        /// Its label.
        label: &'a str,
        /// Its name within the label.
        name: &'a str,
    },
    /// A device id.
    DeviceId(&'a str),
}

impl<'a> IdentifierKeys<'a> {
    /// Keeps only the identifiers `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(IdentifierKey<'_>) -> bool) {
        self.external_ids.retain(|&id| keep(IdentifierKey::ExternalId(id)));
        let (labels, names) = self
            .alias_labels
            .iter()
            .zip(&self.alias_names)
            .filter(|&(&label, &name)| keep(IdentifierKey::Alias { label, name }))
            .unzip();
        (self.alias_labels, self.alias_names) = (labels, names);
        self.device_ids.retain(|&id| keep(IdentifierKey::DeviceId(id)));
    }

    /// No identifier at all.
    pub fn is_empty(&self) -> bool {
        self.external_ids.is_empty() && self.alias_labels.is_empty() && self.device_ids.is_empty()
    }

    /// The identifiers of `profiles`, each once.
    pub fn of(profiles: impl IntoIterator<Item = &'a Profile>) -> Self {
        let mut keys = IdentifierKeys::default();
        let (mut externals, mut aliases, mut devices) = (HashSet::new(), HashSet::new(), HashSet::new());
        for profile in profiles {
            if let Some(external_id) = &profile.external_id
                && externals.insert(external_id)
            {
                keys.external_ids.push(external_id.as_str());
            }
            for alias in &profile.aliases {
                if aliases.insert(alias) {
                    keys.alias_labels.push(alias.alias_label.as_str());
                    keys.alias_names.push(alias.alias_name.as_str());
                }
            }
            for device_id in &profile.device_ids {
                if devices.insert(device_id) {
                    keys.device_ids.push(device_id.as_str());
                }
            }
        }
        keys
    }
}

/// The identifiers a long transaction has written, approximately: a set that may answer
/// "yes" for an identifier it was never given (about 1% of the time) but never "no" for
/// one it was. Bloom filters of 4 MiB, one more for each 3 million identifiers, so the
/// false-positive rate stays put however large the import; about 1.4 bytes an identifier.
#[derive(Debug)]
pub struct WrittenIdentifiers {
    /// Full filters, then the one being filled.
    filters: Vec<BloomFilter<foldhash::fast::RandomState>>,
    /// Identifiers put into the last filter.
    in_last: usize,
    /// Bits of one filter.
    filter_bits: usize,
    /// Identifiers one filter takes before the next is started.
    filter_items: usize,
}

impl Default for WrittenIdentifiers {
    /// 4 MiB filters of 3 million identifiers: ~11 bits each, under 1% false positives.
    fn default() -> Self {
        WrittenIdentifiers::sized(32 * 1024 * 1024, 3_000_000)
    }
}

impl WrittenIdentifiers {
    /// Filters of `filter_bits` bits, each taking `filter_items` identifiers.
    fn sized(filter_bits: usize, filter_items: usize) -> Self {
        WrittenIdentifiers { filters: Vec::new(), in_last: 0, filter_bits, filter_items }
    }

    /// Remembers `key`.
    pub fn insert(&mut self, key: IdentifierKey<'_>) {
        if self.filters.is_empty() || self.in_last == self.filter_items {
            let filter = BloomFilter::with_num_bits(self.filter_bits)
                .hasher(foldhash::fast::RandomState::default())
                .expected_items(self.filter_items);
            self.filters.push(filter);
            self.in_last = 0;
        }
        if let Some(last) = self.filters.last_mut() {
            last.insert(&key);
            self.in_last += 1;
        }
    }

    /// False if `key` was certainly never inserted.
    pub fn may_contain(&self, key: IdentifierKey<'_>) -> bool {
        self.filters.iter().any(|filter| filter.contains(&key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_identifiers_never_forget_and_rarely_invent() {
        let mut written = WrittenIdentifiers::sized(1024, 100);
        let names: Vec<String> = (0..250).map(|i| format!("id-{i}")).collect();
        let key = |i: usize| match i % 3 {
            0 => IdentifierKey::ExternalId(&names[i]),
            1 => IdentifierKey::Alias { label: "l", name: &names[i] },
            _ => IdentifierKey::DeviceId(&names[i]),
        };
        (0..names.len()).for_each(|i| written.insert(key(i)));
        // Past 100 identifiers a filter is full and the next one starts.
        assert_eq!(written.filters.len(), 3);
        assert!((0..names.len()).all(|i| written.may_contain(key(i))));
        // ~10 bits an identifier: a few percent of false positives over three filters.
        let others: Vec<String> = (0..1000).map(|i| format!("other-{i}")).collect();
        let invented = others.iter().filter(|other| written.may_contain(IdentifierKey::ExternalId(other))).count();
        assert!(invented < 150, "{invented} of 1000 unknown identifiers reported written");
    }
}
