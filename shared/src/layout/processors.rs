//! The processor services and the job kinds each one owns.
//!
//! This table is the one place that says which service consumes which kinds: provisioning
//! (`jetjobs-admin`) builds the `JOBS` consumers from it without linking the processors,
//! and each processor crate takes its name and kinds from it, with a test that its
//! handlers are exactly these kinds. A new processor is a line here (and its crate, and
//! its user in `deploy/nats/auth.conf`); a new kind is a word in its processor's line.

use crate::job::{Kind, Priority};
use crate::subjects;

/// The processor for I/O-bound kinds.
pub const PROCESSOR_IO: &str = "processor-io";
/// The processor for CPU-bound kinds.
pub const PROCESSOR_CPU: &str = "processor-cpu";

/// Every processor service, with the kinds it owns. `JOBS` is a work-queue stream, so no
/// kind may belong to two of them (the server refuses overlapping consumer filters).
const PROCESSORS: &[(&str, &[&str])] = &[
    (PROCESSOR_IO, &["flaky", "noop", "sleep"]),
    (PROCESSOR_CPU, &["hash", "thumbnail"]),
];

/// A processor service as the layout sees it: its durable consumer and the kinds it owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessorSpec {
    /// Service name, also the durable consumer's name (`processor-io`).
    pub name: String,
    /// Sorted.
    pub kinds: Vec<Kind>,
}

impl ProcessorSpec {
    /// A spec from its name and kinds (sorted here, as [`crate::processor::Processor::spec`]
    /// sorts them, so the two compare equal).
    ///
    /// # Panics
    /// If a kind is not a valid kind name: kinds are compile-time constants.
    pub fn new(name: &str, kinds: &[&str]) -> Self {
        let mut kinds: Vec<Kind> = kinds
            .iter()
            .map(|kind| {
                Kind::new(*kind)
                    .unwrap_or_else(|e| panic!("processor {name} lists an invalid kind: {e}"))
            })
            .collect();
        kinds.sort();
        kinds.dedup();
        Self {
            name: name.to_string(),
            kinds,
        }
    }

    /// The normal-priority jobs of its kinds: its main consumer's filter.
    pub fn filter_subjects(&self) -> Vec<String> {
        self.filter_subjects_for(Priority::Normal)
    }

    pub fn filter_subjects_for(&self, priority: Priority) -> Vec<String> {
        let mut subjects: Vec<String> = self
            .kinds
            .iter()
            .map(|kind| subjects::submit_filter(kind, priority))
            .collect();
        subjects.sort();
        subjects
    }

    /// The durable consumer of its jobs of `priority`: `processor-io`, `processor-io-high`,
    /// `processor-io-low`.
    pub fn consumer_name(&self, priority: Priority) -> String {
        match priority {
            Priority::Normal => self.name.clone(),
            other => format!("{}-{}", self.name, other.as_str()),
        }
    }
}

/// Every processor service of jetjobs, in a stable order.
pub fn processors() -> Vec<ProcessorSpec> {
    PROCESSORS
        .iter()
        .map(|(name, kinds)| ProcessorSpec::new(name, kinds))
        .collect()
}

/// The processor named `name`, if jetjobs has one.
pub fn processor(name: &str) -> Option<ProcessorSpec> {
    PROCESSORS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(name, kinds)| ProcessorSpec::new(name, kinds))
}

/// `processor-io`'s spec.
pub fn processor_io() -> ProcessorSpec {
    spec_of(PROCESSOR_IO)
}

/// `processor-cpu`'s spec.
pub fn processor_cpu() -> ProcessorSpec {
    spec_of(PROCESSOR_CPU)
}

fn spec_of(name: &str) -> ProcessorSpec {
    processor(name).unwrap_or_else(|| panic!("{name} is missing from layout::PROCESSORS"))
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    #[test]
    fn every_processor_has_valid_unique_kinds_and_no_kind_has_two_owners() {
        let specs = processors();
        assert_eq!(specs.len(), PROCESSORS.len());
        let mut owners: HashMap<&str, &str> = HashMap::new();
        for ((name, kinds), spec) in PROCESSORS.iter().zip(&specs) {
            assert_eq!(spec.name, *name);
            assert!(!spec.kinds.is_empty(), "{name} owns no kind");
            assert_eq!(spec.kinds.len(), kinds.len(), "{name} lists a kind twice");
            for kind in *kinds {
                if let Some(other) = owners.insert(kind, name) {
                    panic!("kind {kind} belongs to both {other} and {name}");
                }
            }
        }
        let names: HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names.len(), specs.len(), "a processor is listed twice");
    }

    #[test]
    fn the_named_specs_are_the_table_rows() {
        assert_eq!(processor_io().filter_subjects().len(), 3);
        assert_eq!(
            processor_cpu().filter_subjects(),
            vec!["jobs.submit.hash.*", "jobs.submit.thumbnail.*"]
        );
        assert_eq!(processor("processor-nope"), None);
    }
}
