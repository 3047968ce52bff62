//! The paper's Table 4: downstream results of pre-training variants (stages, their order,
//! tasks removed), one row per variant, mean ± spread over seeds.

use serde::{Deserialize, Serialize};

use crate::report::markdown_table;
use crate::suite::DownstreamResults;

/// Table 4's columns: VQA, GQA, NLVR2 (reported split), then the mean of R@1/5/10 for
/// IR, ZS-IR, TR and ZS-TR (TR in LXMERT-S's first-caption protocol).
pub const COLUMNS: [&str; 7] = [
    "VQA",
    "GQA",
    "NLVR2",
    "IR avg",
    "ZS-IR avg",
    "TR avg",
    "ZS-TR avg",
];

/// The paper's Table 4 rows: (stages, tasks, values in [`COLUMNS`] order; `None` = "-").
pub const PAPER: [(&str, &str, [Option<f64>; 7]); 13] = [
    (
        "vanilla",
        "none",
        [
            Some(68.1),
            Some(55.71),
            Some(51.07),
            Some(55.27),
            None,
            Some(58.07),
            None,
        ],
    ),
    (
        "S",
        "MLM MRFR MOC TITS ITM-HS",
        [
            Some(70.25),
            Some(57.66),
            Some(70.23),
            Some(73.86),
            Some(54.64),
            Some(78.3),
            Some(59.73),
        ],
    ),
    (
        "S",
        "− ITM-HS",
        [
            Some(69.87),
            Some(57.48),
            Some(70.98),
            Some(71.46),
            Some(51.79),
            Some(75.6),
            Some(53.33),
        ],
    ),
    (
        "S",
        "− ITM-HS − TITS",
        [
            Some(69.79),
            Some(57.47),
            Some(70.73),
            Some(70.17),
            Some(49.38),
            Some(74.1),
            Some(50.3),
        ],
    ),
    (
        "T+P+S",
        "MLM MRFR MOC ITM",
        [
            Some(70.1),
            Some(57.58),
            Some(72.24),
            Some(74.31),
            Some(59.31),
            Some(77.87),
            Some(63.33),
        ],
    ),
    (
        "T→S",
        "MLM MRFR MOC TITS ITM-HS IFRS",
        [
            Some(70.71),
            Some(58.39),
            Some(73.85),
            Some(75.68),
            Some(61.53),
            Some(80.27),
            Some(65.47),
        ],
    ),
    (
        "T→S",
        "− IFRS",
        [
            Some(70.54),
            Some(58.4),
            Some(73.93),
            Some(76.08),
            Some(60.5),
            Some(80.6),
            Some(65.03),
        ],
    ),
    (
        "P→S",
        "MLM MRFR MOC TITS ITM-HS TITP",
        [
            Some(70.58),
            Some(57.96),
            Some(72.96),
            Some(74.81),
            Some(57.66),
            Some(79.5),
            Some(61.13),
        ],
    ),
    (
        "P→S",
        "− TITP",
        [
            Some(70.52),
            Some(58.17),
            Some(71.18),
            Some(75.49),
            Some(59.28),
            Some(80.4),
            Some(62.73),
        ],
    ),
    (
        "T→P→S",
        "MLM MRFR MOC TITS ITM-HS IFRS TITP",
        [
            Some(71.1),
            Some(58.7),
            Some(74.72),
            Some(76.55),
            Some(63.01),
            Some(80.83),
            Some(68.6),
        ],
    ),
    (
        "T→P→S",
        "− TITP",
        [
            Some(71.01),
            Some(58.3),
            Some(74.48),
            Some(76.07),
            Some(63.07),
            Some(80.96),
            Some(67.77),
        ],
    ),
    (
        "S→P→T",
        "MLM MRFR MOC TITS ITM-HS IFRS TITP",
        [
            Some(69.43),
            Some(57.98),
            Some(56.75),
            Some(71.03),
            None,
            Some(74.87),
            None,
        ],
    ),
    (
        "P→T→S",
        "MLM MRFR MOC TITS ITM-HS IFRS TITP",
        [
            Some(70.92),
            Some(58.05),
            Some(73.62),
            Some(76.69),
            Some(61.29),
            Some(81.63),
            Some(67.0),
        ],
    ),
];

/// The Table 4 values of one run ([`COLUMNS`] order; `None` where the task was not run).
pub fn table4_values(r: &DownstreamResults) -> [Option<f64>; 7] {
    [
        r.vqa.as_ref().map(|x| x.test_accuracy),
        r.gqa.as_ref().map(|x| x.test_accuracy),
        r.nlvr2.as_ref().map(|x| x.test_accuracy),
        r.retrieval.as_ref().map(|x| x.scores.ir.avg()),
        r.zero_shot.as_ref().map(|x| x.ir.avg()),
        r.retrieval
            .as_ref()
            .map(|x| x.scores.tr_first_caption.avg()),
        r.zero_shot.as_ref().map(|x| x.tr_first_caption.avg()),
    ]
}

/// One measured row: its label and the values of each seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AblationRow {
    /// Stages (`S`, `T→P→S`, `vanilla` …).
    pub stages: String,
    /// Tasks (or what was removed).
    pub tasks: String,
    /// Per seed, the [`COLUMNS`] values.
    pub seeds: Vec<[Option<f64>; 7]>,
}

/// Mean and spread (sample standard deviation; 0 for one seed) of the present values.
pub fn mean_spread(values: impl IntoIterator<Item = Option<f64>>) -> Option<(f64, f64)> {
    let v: Vec<f64> = values.into_iter().flatten().collect();
    if v.is_empty() {
        return None;
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let spread = if v.len() > 1 {
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    Some((mean, spread))
}

impl AblationRow {
    /// Mean ± spread per column.
    pub fn summary(&self) -> [Option<(f64, f64)>; 7] {
        std::array::from_fn(|c| mean_spread(self.seeds.iter().map(|s| s[c])))
    }
}

/// Table 4 as Markdown: our rows (mean ± spread over seeds), then the paper's rows.
pub fn table4_markdown(rows: &[AblationRow]) -> String {
    let mut header = vec!["stages".to_string(), "tasks".into(), "seeds".into()];
    header.extend(COLUMNS.iter().map(|c| c.to_string()));
    let mut t = vec![header.clone()];
    for r in rows {
        let mut row = vec![r.stages.clone(), r.tasks.clone(), r.seeds.len().to_string()];
        row.extend(r.summary().iter().map(|c| match c {
            Some((m, s)) if r.seeds.len() > 1 => format!("{m:.2} ± {s:.2}"),
            Some((m, _)) => format!("{m:.2}"),
            None => "–".into(),
        }));
        t.push(row);
    }
    let mut s = String::from("### Ours (measured)\n\n");
    s.push_str(&markdown_table(&t));
    let mut p = vec![header];
    p[0][2] = "".into();
    for (stages, tasks, v) in PAPER {
        let mut row = vec![stages.to_string(), tasks.to_string(), String::new()];
        row.extend(
            v.iter()
                .map(|x| x.map_or("–".into(), |x| format!("{x:.2}"))),
        );
        p.push(row);
    }
    s.push_str("\n### The paper's Table 4 (real data, for reference)\n\n");
    s.push_str(&markdown_table(&p));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_spread_by_hand() {
        assert_eq!(
            mean_spread([Some(1.0), Some(3.0)]),
            Some((2.0, 2f64.sqrt()))
        );
        assert_eq!(mean_spread([Some(5.0), None]), Some((5.0, 0.0)));
        assert_eq!(mean_spread([None, None]), None);
    }

    #[test]
    fn table_shows_spread_only_for_several_seeds() {
        let rows = vec![
            AblationRow {
                stages: "S".into(),
                tasks: "all".into(),
                seeds: vec![[Some(50.0), None, None, None, None, None, None]],
            },
            AblationRow {
                stages: "T→P→S".into(),
                tasks: "all".into(),
                seeds: vec![
                    [Some(50.0); 7],
                    [
                        Some(52.0),
                        Some(1.0),
                        Some(1.0),
                        Some(1.0),
                        Some(1.0),
                        Some(1.0),
                        None,
                    ],
                ],
            },
        ];
        let md = table4_markdown(&rows);
        assert!(md.contains("| S | all | 1 | 50.00 | – |"), "{md}");
        assert!(md.contains("| T→P→S | all | 2 | 51.00 ± 1.41 |"), "{md}");
        assert!(
            md.contains("| P→T→S | MLM MRFR MOC TITS ITM-HS IFRS TITP |  | 70.92 |"),
            "{md}"
        );
    }
}
