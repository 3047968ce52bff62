//! The pre-training tasks and sets of them.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Result, TaskError};

/// One pre-training task of MSP (paper §3, SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Task {
    /// Masked language modelling.
    Mlm,
    /// Masked region feature regression.
    Mrfr,
    /// Masked object (and attribute) classification.
    Moc,
    /// Image features random shuffle (token stage).
    Ifrs,
    /// Topic of image and text for phrases (phrase stage).
    Titp,
    /// Topic of image and text for sentences (sentence stage).
    Tits,
    /// Image-text matching with random negatives.
    Itm,
    /// Image-text matching with hard negatives (sentence stage).
    ItmHs,
}

impl Task {
    /// Every task, in display order.
    pub const ALL: [Task; 8] = [
        Task::Mlm,
        Task::Mrfr,
        Task::Moc,
        Task::Ifrs,
        Task::Titp,
        Task::Tits,
        Task::Itm,
        Task::ItmHs,
    ];

    /// The paper's name (`"MLM"`, `"ITM-HS"`, …).
    pub fn name(self) -> &'static str {
        match self {
            Task::Mlm => "MLM",
            Task::Mrfr => "MRFR",
            Task::Moc => "MOC",
            Task::Ifrs => "IFRS",
            Task::Titp => "TITP",
            Task::Tits => "TITS",
            Task::Itm => "ITM",
            Task::ItmHs => "ITM-HS",
        }
    }

    /// True for the two topic tasks (one topic head serves both).
    pub fn is_topic(self) -> bool {
        matches!(self, Task::Titp | Task::Tits)
    }

    /// True for the two matching tasks (one match head serves both).
    pub fn is_matching(self) -> bool {
        matches!(self, Task::Itm | Task::ItmHs)
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Task {
    type Err = TaskError;

    /// Case-insensitive; `ITM-HS`, `ITM_HS`, `ITMHS` and `ITM HS` all name [`Task::ItmHs`].
    fn from_str(s: &str) -> Result<Self> {
        let key: String = s
            .trim()
            .chars()
            .filter(|c| !matches!(c, '-' | '_' | ' '))
            .collect::<String>()
            .to_ascii_uppercase();
        Task::ALL
            .into_iter()
            .find(|t| t.name().replace('-', "") == key)
            .ok_or_else(|| TaskError::UnknownTask {
                name: s.to_string(),
            })
    }
}

/// A set of tasks trained together in one stage.
///
/// At most one topic task (TITP or TITS: they share the topic head and target) and at most
/// one matching task (ITM or ITM-HS: they share the match head and differ only in the
/// negative sampler) may be present; [`TaskSet::new`] rejects other combinations.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskSet {
    tasks: BTreeSet<Task>,
}

impl TaskSet {
    /// A validated set.
    pub fn new(tasks: impl IntoIterator<Item = Task>) -> Result<Self> {
        let tasks: BTreeSet<Task> = tasks.into_iter().collect();
        if tasks.contains(&Task::Titp) && tasks.contains(&Task::Tits) {
            return Err(TaskError::InvalidTaskSet(
                "TITP and TITS share one topic head; use one of them".into(),
            ));
        }
        if tasks.contains(&Task::Itm) && tasks.contains(&Task::ItmHs) {
            return Err(TaskError::InvalidTaskSet(
                "ITM and ITM-HS share one match head; use one of them".into(),
            ));
        }
        Ok(Self { tasks })
    }

    /// The token (word) stage: MLM, MRFR, MOC, IFRS.
    pub fn token_stage() -> Self {
        Self::from_valid(&[Task::Mlm, Task::Mrfr, Task::Moc, Task::Ifrs])
    }

    /// The phrase stage: MLM, MRFR, MOC, TITP.
    pub fn phrase_stage() -> Self {
        Self::from_valid(&[Task::Mlm, Task::Mrfr, Task::Moc, Task::Titp])
    }

    /// The sentence stage: MLM, MRFR, MOC, ITM-HS, TITS.
    pub fn sentence_stage() -> Self {
        Self::from_valid(&[Task::Mlm, Task::Mrfr, Task::Moc, Task::ItmHs, Task::Tits])
    }

    /// LXMERT's pre-training tasks without QA: MLM, MRFR, MOC, ITM.
    pub fn lxmert() -> Self {
        Self::from_valid(&[Task::Mlm, Task::Mrfr, Task::Moc, Task::Itm])
    }

    fn from_valid(t: &[Task]) -> Self {
        Self {
            tasks: t.iter().copied().collect(),
        }
    }

    /// Parses a comma-separated list (`"MLM,MRFR,IFRS"`); an empty string is the empty set.
    pub fn parse_list(s: &str) -> Result<Self> {
        let tasks = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(Task::from_str)
            .collect::<Result<Vec<_>>>()?;
        Self::new(tasks)
    }

    /// The set without `removed` (the CLI's `--without`).
    pub fn without(&self, removed: &[Task]) -> Self {
        Self {
            tasks: self
                .tasks
                .iter()
                .copied()
                .filter(|t| !removed.contains(t))
                .collect(),
        }
    }

    /// Whether `task` is in the set.
    pub fn contains(&self, task: Task) -> bool {
        self.tasks.contains(&task)
    }

    /// The tasks in display order.
    pub fn iter(&self) -> impl Iterator<Item = Task> + '_ {
        self.tasks.iter().copied()
    }

    /// Number of tasks.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// True when no task is in the set.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The topic task in the set, if any.
    pub fn topic_task(&self) -> Option<Task> {
        self.iter().find(|t| t.is_topic())
    }

    /// The matching task in the set, if any.
    pub fn matching_task(&self) -> Option<Task> {
        self.iter().find(|t| t.is_matching())
    }

    /// Whether regions are masked (MRFR or MOC).
    pub fn masks_regions(&self) -> bool {
        self.contains(Task::Mrfr) || self.contains(Task::Moc)
    }
}

impl fmt::Display for TaskSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Task::name).collect();
        f.write_str(&names.join(","))
    }
}

impl FromStr for TaskSet {
    type Err = TaskError;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse_list(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in Task::ALL {
            assert_eq!(t.to_string().parse::<Task>().unwrap(), t);
            assert_eq!(t.name().to_lowercase().parse::<Task>().unwrap(), t);
        }
        assert_eq!("itm_hs".parse::<Task>().unwrap(), Task::ItmHs);
        assert_eq!("ITM HS".parse::<Task>().unwrap(), Task::ItmHs);
        assert!(matches!(
            "QA".parse::<Task>(),
            Err(TaskError::UnknownTask { name }) if name == "QA"
        ));
    }

    #[test]
    fn sets_parse_display_and_validate() {
        let s = TaskSet::parse_list("IFRS, mlm,MRFR").unwrap();
        assert_eq!(s.to_string(), "MLM,MRFR,IFRS");
        assert_eq!(s.to_string().parse::<TaskSet>().unwrap(), s);
        assert!(TaskSet::parse_list("").unwrap().is_empty());
        assert!(matches!(
            TaskSet::parse_list("TITP,TITS"),
            Err(TaskError::InvalidTaskSet(_))
        ));
        assert!(matches!(
            TaskSet::parse_list("ITM,ITM-HS"),
            Err(TaskError::InvalidTaskSet(_))
        ));
        let s = TaskSet::sentence_stage().without(&[Task::ItmHs, Task::Mrfr]);
        assert_eq!(s.to_string(), "MLM,MOC,TITS");
        assert_eq!(s.topic_task(), Some(Task::Tits));
        assert_eq!(s.matching_task(), None);
        assert!(s.masks_regions());
        assert_eq!(TaskSet::token_stage().to_string(), "MLM,MRFR,MOC,IFRS");
        assert_eq!(TaskSet::phrase_stage().to_string(), "MLM,MRFR,MOC,TITP");
    }
}
