//! The paper's tables from measured results: Table 1 (parameters, data, resources),
//! Table 2 (VQA / GQA / NLVR2) and Table 3 (retrieval, zero-shot and fine-tuned), with the
//! paper's LXMERT-S numbers beside ours, labelled as the paper's (real data), and the
//! synthetic world's text-only and oracle baselines when known.

use msp_synth::TaskBaseline;
use serde::{Deserialize, Serialize};

use crate::retrieval::RetrievalScores;
use crate::suite::DownstreamResults;

/// The paper's LXMERT-S numbers (Tables 1–3; real COCO/VG data, one TitanX).
pub mod paper {
    /// Table 1: parameters of the Transformer part (M).
    pub const PARAMETERS_M: f64 = 84.3;
    /// Table 1: text-image pairs (M): token 0.12, phrase 0.34, sentence 0.62.
    pub const PAIRS_M: f64 = 1.08;
    /// Table 1: resources.
    pub const RESOURCES: &str = "1 TitanX GPU, ≈ 95 h pre-training";
    /// Table 2: VQA test-dev, test-std; GQA test-dev, test-std; NLVR2 val, test-P.
    pub const TABLE2: [f64; 6] = [71.1, 71.18, 58.7, 59.12, 74.03, 74.72];
    /// Table 3: zero-shot IR R@1/5/10, zero-shot TR, IR, TR.
    pub const TABLE3: [[f64; 3]; 4] = [
        [42.42, 68.7, 77.92],
        [49.0, 75.0, 81.8],
        [57.9, 83.0, 88.7],
        [64.6, 87.5, 90.4],
    ];
    /// Table 1 row of LXMERT for comparison: parameters (M), pairs (M), resources.
    pub const LXMERT: (f64, f64, &str) = (183.5, 9.18, "4 TitanX GPUs, 8.5 days");
}

/// Table 1 measurements of our run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// Parameters counted as the paper does (cross layers + visual encoder).
    pub parameters_paper_count: usize,
    /// Every parameter of the pre-training model.
    pub parameters_total: usize,
    /// Text-image pairs per pre-training stage (stage name, examples of its source).
    pub stage_pairs: Vec<(String, usize)>,
    /// Device (`cpu`, `cuda:0`), with threads for the CPU.
    pub device: String,
    /// Wall seconds: world generation, pre-training, fine-tuning and evaluation.
    pub seconds: Seconds,
    /// Peak resident memory of the process (bytes), when known.
    pub peak_rss_bytes: Option<u64>,
}

/// Wall-clock split of a reproduce run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Seconds {
    /// Generating or opening the data.
    pub data: f64,
    /// Pre-training (all stages, this session; finished stages reused cost 0).
    pub pretrain: f64,
    /// Fine-tuning and evaluation.
    pub downstream: f64,
    /// All.
    pub total: f64,
}

/// Everything a report shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Preset.
    pub preset: String,
    /// Schedule pre-trained.
    pub schedule: String,
    /// What the pre-training ran (tasks and learning rate per stage, the visual-head gate);
    /// empty in reports written before this field existed.
    #[serde(default)]
    pub pretraining: String,
    /// Data directory.
    pub data: String,
    /// Seed.
    pub seed: u64,
    /// Table 1 measurements.
    pub resources: Resources,
    /// Downstream results.
    pub results: DownstreamResults,
    /// Synthetic-world baselines (empty on real data).
    pub baselines: Vec<TaskBaseline>,
}

fn f2(x: f64) -> String {
    format!("{x:.2}")
}

fn opt(x: Option<f64>) -> String {
    x.map_or_else(|| "–".to_string(), f2)
}

fn human_count(n: usize) -> String {
    if n >= 1_000_000 {
        format!("{:.1}M", n as f64 / 1e6)
    } else if n >= 1_000 {
        format!("{:.1}k", n as f64 / 1e3)
    } else {
        n.to_string()
    }
}

impl Report {
    fn baseline(&self, task: &str, split: &str, metric: &str) -> Option<&TaskBaseline> {
        self.baselines
            .iter()
            .find(|b| b.task == task && b.split == split && b.metric == metric)
    }

    fn baseline_row(&self, name: &str, pick: impl Fn(&TaskBaseline) -> f64) -> Option<Vec<String>> {
        let keys = [
            ("vqa", "minival", "vqa soft score"),
            ("vqa", "test", "vqa soft score"),
            ("gqa", "valid", "accuracy"),
            ("gqa", "testdev", "accuracy"),
            ("nlvr2", "valid", "accuracy"),
            ("nlvr2", "test", "accuracy"),
        ];
        let cells: Vec<Option<f64>> = keys
            .iter()
            .map(|(t, s, m)| self.baseline(t, s, m).map(|b| 100.0 * pick(b)))
            .collect();
        if cells.iter().all(Option::is_none) {
            return None;
        }
        let mut row = vec![name.to_string()];
        row.extend(cells.into_iter().map(opt));
        Some(row)
    }

    /// Table 2 rows (header first).
    pub fn table2(&self) -> Vec<Vec<String>> {
        let r = &self.results;
        let mut rows = vec![vec![
            "model".to_string(),
            "VQA val (paper: test-dev)".into(),
            "VQA test (paper: test-std)".into(),
            "GQA valid (paper: test-dev)".into(),
            "GQA testdev (paper: test-std)".into(),
            "NLVR2 valid (paper: val)".into(),
            "NLVR2 test (paper: test-P)".into(),
        ]];
        let mut paper = vec!["LXMERT-S, paper (real data)".to_string()];
        paper.extend(paper::TABLE2.iter().map(|&x| f2(x)));
        rows.push(paper);
        rows.push(vec![
            format!("LXMERT-S {}, ours ({})", self.schedule, self.data_label()),
            opt(r.vqa.as_ref().map(|x| x.valid_accuracy)),
            opt(r.vqa.as_ref().map(|x| x.test_accuracy)),
            opt(r.gqa.as_ref().map(|x| x.valid_accuracy)),
            opt(r.gqa.as_ref().map(|x| x.test_accuracy)),
            opt(r.nlvr2.as_ref().map(|x| x.valid_accuracy)),
            opt(r.nlvr2.as_ref().map(|x| x.test_accuracy)),
        ]);
        if let Some(row) = self.baseline_row("text-only baseline (world.json)", |b| {
            f64::from(b.text_only)
        }) {
            rows.push(row);
        }
        if let Some(row) =
            self.baseline_row("scene-graph oracle (world.json)", |b| f64::from(b.oracle))
        {
            rows.push(row);
        }
        rows
    }

    fn data_label(&self) -> &'static str {
        if self.baselines.is_empty() {
            "measured"
        } else {
            "synthetic world"
        }
    }

    /// Table 3 rows (header first): zero-shot IR, zero-shot TR, IR, TR (R@1/5/10). TR uses
    /// LXMERT-S's first-caption protocol as the paper; a second row gives the standard
    /// five-caption TR.
    pub fn table3(&self) -> Vec<Vec<String>> {
        let mut header = vec!["model".to_string()];
        for block in ["ZS-IR", "ZS-TR", "IR", "TR"] {
            for k in ["R@1", "R@5", "R@10"] {
                header.push(format!("{block} {k}"));
            }
        }
        let mut rows = vec![header];
        let mut paper = vec!["LXMERT-S, paper (real data)".to_string()];
        paper.extend(paper::TABLE3.iter().flatten().map(|&x| f2(x)));
        rows.push(paper);
        let r = &self.results;
        let zs = r.zero_shot.as_ref();
        let ft = r.retrieval.as_ref().map(|x| &x.scores);
        let cells = |s: Option<&RetrievalScores>, f: &dyn Fn(&RetrievalScores) -> [f64; 3]| {
            s.map_or_else(
                || vec!["–".to_string(); 3],
                |s| f(s).iter().map(|&x| f2(x)).collect(),
            )
        };
        let ir = |s: &RetrievalScores| [s.ir.r1, s.ir.r5, s.ir.r10];
        let tr1 = |s: &RetrievalScores| {
            [
                s.tr_first_caption.r1,
                s.tr_first_caption.r5,
                s.tr_first_caption.r10,
            ]
        };
        let tr5 = |s: &RetrievalScores| [s.tr.r1, s.tr.r5, s.tr.r10];
        for (label, tr) in [
            (
                "TR: first caption (LXMERT-S)",
                &tr1 as &dyn Fn(&RetrievalScores) -> [f64; 3],
            ),
            ("TR: 5 captions (standard)", &tr5),
        ] {
            let mut row = vec![format!(
                "LXMERT-S {}, ours ({}); {label}",
                self.schedule,
                self.data_label()
            )];
            row.extend(cells(zs, &ir));
            row.extend(cells(zs, tr));
            row.extend(cells(ft, &ir));
            row.extend(cells(ft, tr));
            rows.push(row);
        }
        for (name, pick) in [
            (
                "text-only baseline (world.json)",
                &(|b: &TaskBaseline| f64::from(b.text_only)) as &dyn Fn(&TaskBaseline) -> f64,
            ),
            ("scene-graph oracle (world.json)", &|b: &TaskBaseline| {
                f64::from(b.oracle)
            }),
        ] {
            let get = |task: &str, k: &str| {
                self.baseline(task, "test", &format!("recall@{k}"))
                    .map(|b| 100.0 * pick(b))
            };
            let ir: Vec<Option<f64>> = ["1", "5", "10"]
                .iter()
                .map(|k| get("flickr30k IR", k))
                .collect();
            let tr: Vec<Option<f64>> = ["1", "5", "10"]
                .iter()
                .map(|k| get("flickr30k TR", k))
                .collect();
            if ir.iter().chain(&tr).all(Option::is_none) {
                continue;
            }
            let mut row = vec![name.to_string()];
            for block in [&ir, &tr, &ir, &tr] {
                row.extend(block.iter().map(|&x| opt(x)));
            }
            rows.push(row);
        }
        rows
    }

    /// Table 1 rows (header first).
    pub fn table1(&self) -> Vec<Vec<String>> {
        let res = &self.resources;
        let pairs: usize = res.stage_pairs.iter().map(|p| p.1).sum();
        let per_stage = res
            .stage_pairs
            .iter()
            .map(|(s, n)| format!("{s} {}", human_count(*n)))
            .collect::<Vec<_>>()
            .join(", ");
        let rss = res
            .peak_rss_bytes
            .map(|b| format!(", peak RSS {:.1} GiB", b as f64 / (1u64 << 30) as f64))
            .unwrap_or_default();
        vec![
            vec![
                "model".into(),
                "parameters (Transformer part)".into(),
                "text-image pairs".into(),
                "resources".into(),
            ],
            vec![
                "LXMERT, paper".into(),
                format!("{}M", paper::LXMERT.0),
                format!("{}M", paper::LXMERT.1),
                paper::LXMERT.2.into(),
            ],
            vec![
                "LXMERT-S, paper".into(),
                format!("{}M", paper::PARAMETERS_M),
                format!(
                    "{}M (token 0.12M, phrase 0.34M, sentence 0.62M)",
                    paper::PAIRS_M
                ),
                paper::RESOURCES.into(),
            ],
            vec![
                format!("LXMERT-S, ours ({} preset)", self.preset),
                format!(
                    "{} ({} with embeddings and heads)",
                    human_count(res.parameters_paper_count),
                    human_count(res.parameters_total)
                ),
                format!("{} ({per_stage})", human_count(pairs)),
                format!(
                    "{}: pre-training {:.0} s, downstream {:.0} s, total {:.0} s{rss}",
                    res.device, res.seconds.pretrain, res.seconds.downstream, res.seconds.total
                ),
            ],
        ]
    }

    /// The report as Markdown (title, the three tables, notes).
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# msp reproduce: preset `{}`, schedule {}, seed {}\n\nData: `{}`.\n\n",
            self.preset, self.schedule, self.seed, self.data
        );
        if !self.pretraining.is_empty() {
            s.push_str(&format!("Pre-training: {}.\n\n", self.pretraining));
        }
        s.push_str("## Table 1: parameters, pre-training data and resources\n\n");
        s.push_str(&markdown_table(&self.table1()));
        s.push_str("\n## Table 2: VQA, GQA and NLVR2 (accuracy, %)\n\n");
        s.push_str(&markdown_table(&self.table2()));
        s.push_str("\n## Table 3: image and text retrieval (recall, %)\n\n");
        s.push_str(&markdown_table(&self.table3()));
        s.push_str(
            "\nThe paper's rows are its published LXMERT-S numbers on real data (COCO, VG, \
             VQA v2, GQA, NLVR2, Flickr30k), for reference only; they are not comparable with \
             numbers measured on the synthetic world. Splits: ours report the split named in \
             each column header (the synthetic world labels every split, so test splits are \
             scored locally). ZS = zero-shot (the pre-trained ITM head, no fine-tuning).\n",
        );
        s
    }
}

/// A Markdown table from rows (the first row is the header).
pub fn markdown_table(rows: &[Vec<String>]) -> String {
    let mut s = String::new();
    for (i, r) in rows.iter().enumerate() {
        s.push_str("| ");
        s.push_str(&r.join(" | "));
        s.push_str(" |\n");
        if i == 0 {
            s.push('|');
            for _ in r {
                s.push_str("---|");
            }
            s.push('\n');
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_tables_have_a_separator_row() {
        let t = markdown_table(&[vec!["a".into(), "b".into()], vec!["1".into(), "2".into()]]);
        assert_eq!(t, "| a | b |\n|---|---|\n| 1 | 2 |\n");
    }

    #[test]
    fn empty_results_render_dashes_and_paper_numbers() {
        let r = Report {
            preset: "smoke".into(),
            schedule: "T,P,S".into(),
            pretraining: "sentence (ITM; lr 1e-3)".into(),
            data: "worlds/smoke-seed0".into(),
            seed: 0,
            resources: Resources {
                parameters_paper_count: 1234,
                parameters_total: 5_600_000,
                stage_pairs: vec![("token".into(), 32), ("sentence".into(), 160)],
                device: "cpu".into(),
                seconds: Seconds::default(),
                peak_rss_bytes: None,
            },
            results: DownstreamResults::default(),
            baselines: vec![],
        };
        let md = r.markdown();
        assert!(
            md.contains("| LXMERT-S, paper (real data) | 71.10 | 71.18 | 58.70 |"),
            "{md}"
        );
        assert!(md.contains("42.42 | 68.70 | 77.92 | 49.00"), "{md}");
        assert!(md.contains("1.2k (5.6M with embeddings and heads)"), "{md}");
        assert!(md.contains("192 (token 32, sentence 160)"), "{md}");
        assert!(
            md.contains("Pre-training: sentence (ITM; lr 1e-3).\n"),
            "{md}"
        );
        assert_eq!(r.table2()[2][1], "–");
    }
}
