//! Labelled text for classification: the Rotten Tomatoes sentiment snippets, and a user's own
//! CSV or JSON-lines files.
//!
//! Labels are strings; the classes of a dataset are the distinct training labels, sorted, and
//! an example's label is its index among them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// One labelled text; `label` indexes `Dataset::classes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub text: String,
    pub label: usize,
}

/// A train and a test split over one set of classes.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// `rt-sentiment`, or the training file's path.
    pub name: String,
    /// Sorted class names.
    pub classes: Vec<String>,
    pub train: Vec<Example>,
    pub test: Vec<Example>,
}

impl Dataset {
    /// The first `n` examples of each split (quick runs and tests); the split stays fixed.
    pub fn truncated(mut self, n: usize) -> Self {
        self.train.truncate(n);
        self.test.truncate(n);
        self
    }
}

/// Where `scripts/fetch_assets.sh` puts the Rotten Tomatoes snippets.
pub const RT_DEFAULT_DIR: &str = "assets/rt-sentiment";
/// The file of the snippets: `id<TAB>mean score<TAB>sentence`, CRLF line ends.
pub const RT_FILE: &str = "movieReviewSnippets_GroundTruth.txt";
pub const RT_CLASSES: [&str; 2] = ["negative", "positive"];

/// One Rotten Tomatoes snippet with the mean of its human sentiment ratings (−4 … 4).
#[derive(Debug, Clone, PartialEq)]
pub struct RtSnippet {
    pub id: u64,
    pub score: f64,
    pub text: String,
}

/// Reads every snippet of `RT_FILE` in `dir`, in file order.
pub fn read_rt_snippets(dir: &Path) -> Result<Vec<RtSnippet>> {
    let path = dir.join(RT_FILE);
    if !path.is_file() {
        bail!(
            "{} is missing: the Rotten Tomatoes sentiment data is fetched by `scripts/fetch_assets.sh` (into assets/rt-sentiment)",
            path.display()
        );
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{} line {}", path.display(), i + 1);
        let mut fields = line.splitn(3, '\t');
        let (Some(id), Some(score), Some(sentence)) = (fields.next(), fields.next(), fields.next()) else {
            bail!("{}: expected `id<TAB>score<TAB>sentence`", at());
        };
        let id = id.trim().parse().with_context(|| format!("{}: id {id:?} is not an integer", at()))?;
        let score = score.trim().parse().with_context(|| format!("{}: score {score:?} is not a number", at()))?;
        out.push(RtSnippet { id, score, text: sentence.trim().to_string() });
    }
    Ok(out)
}

/// The Rotten Tomatoes sentiment task: positive when the mean human score is above 0,
/// negative below, snippets scored exactly 0 dropped; a snippet whose id is a multiple of 5 is
/// in the test split, every other one in the train split (8,457 train, 2,111 test).
pub fn rt_sentiment(dir: &Path) -> Result<Dataset> {
    let mut train = Vec::new();
    let mut test = Vec::new();
    for s in read_rt_snippets(dir)? {
        let label = if s.score > 0.0 {
            1
        } else if s.score < 0.0 {
            0
        } else {
            continue;
        };
        let example = Example { text: s.text, label };
        if s.id % 5 == 0 {
            test.push(example)
        } else {
            train.push(example)
        }
    }
    Ok(Dataset { name: "rt-sentiment".into(), classes: RT_CLASSES.map(String::from).to_vec(), train, test })
}

/// Which columns (CSV) or fields (JSON lines) hold the text and the label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    pub text: String,
    pub label: String,
}

impl Default for Columns {
    fn default() -> Self {
        Columns { text: "text".into(), label: "label".into() }
    }
}

/// A labelled row as read, with the line it starts on (1-based, for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub line: u64,
    pub text: String,
    pub label: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    JsonLines,
}

fn format_of(path: &Path) -> Result<Format> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "csv" => Ok(Format::Csv),
        "jsonl" | "ndjson" | "json" => Ok(Format::JsonLines),
        _ => bail!(
            "{}: unknown format; expected a .csv file (with a header line) or JSON lines (.jsonl)",
            path.display()
        ),
    }
}

/// Reads the text and label of every row of a CSV (header line first; quoted fields as RFC
/// 4180) or JSON-lines file, chosen by its extension.
pub fn read_rows(path: &Path, columns: &Columns) -> Result<Vec<Row>> {
    if !path.is_file() {
        bail!("{} does not exist", path.display());
    }
    let format = format_of(path)?;
    let rows = match format {
        Format::Csv => read_csv(path, columns)?,
        Format::JsonLines => read_jsonl(path, columns)?,
    };
    if rows.is_empty() {
        bail!("{} is empty: it holds no labelled rows", path.display());
    }
    Ok(rows)
}

fn read_csv(path: &Path, columns: &Columns) -> Result<Vec<Row>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let header =
        reader.headers().with_context(|| format!("{} line 1: cannot read the header", path.display()))?.clone();
    if header.is_empty() || header.iter().all(|h| h.trim().is_empty()) {
        bail!(
            "{} is empty: expected a header line naming the columns `{}` and `{}`",
            path.display(),
            columns.text,
            columns.label
        );
    }
    let find = |name: &str| {
        header.iter().position(|h| h.trim() == name).with_context(|| {
            format!(
                "{} line 1: no column `{name}` in the header (columns: {})",
                path.display(),
                header.iter().map(|h| format!("`{h}`")).collect::<Vec<_>>().join(", ")
            )
        })
    };
    let (text_col, label_col) = (find(&columns.text)?, find(&columns.label)?);
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.with_context(|| format!("{}: malformed CSV", path.display()))?;
        let line = record.position().map_or(0, |p| p.line());
        let field = |col: usize, name: &str| {
            record.get(col).map(str::to_string).with_context(|| {
                format!("{} line {line}: the row has {} fields, no column `{name}`", path.display(), record.len())
            })
        };
        let (text, label) = (field(text_col, &columns.text)?, field(label_col, &columns.label)?);
        if label.trim().is_empty() {
            bail!("{} line {line}: column `{}` is empty", path.display(), columns.label);
        }
        rows.push(Row { line, text, label: label.trim().to_string() });
    }
    Ok(rows)
}

fn read_jsonl(path: &Path, columns: &Columns) -> Result<Vec<Row>> {
    let content = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in content.lines().enumerate() {
        let line_no = i as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{} line {line_no}", path.display());
        let value: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}: not valid JSON", at()))?;
        let object = value.as_object().with_context(|| format!("{}: expected a JSON object", at()))?;
        let get = |name: &str| -> Result<String> {
            match object.get(name) {
                None => bail!(
                    "{}: no field `{name}` (fields: {})",
                    at(),
                    object.keys().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                ),
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => Ok(v.to_string()),
                Some(v) => bail!("{}: field `{name}` is {v}; expected a string, number or boolean", at()),
            }
        };
        let (text, label) = (get(&columns.text)?, get(&columns.label)?);
        if label.trim().is_empty() {
            bail!("{}: field `{}` is empty", at(), columns.label);
        }
        rows.push(Row { line: line_no, text, label: label.trim().to_string() });
    }
    Ok(rows)
}

/// A dataset from the user's train and test files: the classes are the training labels,
/// sorted; at least two are needed, and every test label must be one of them.
pub fn from_files(train: &Path, test: &Path, columns: &Columns) -> Result<Dataset> {
    let train_rows = read_rows(train, columns)?;
    let test_rows = read_rows(test, columns)?;
    let classes: Vec<String> =
        train_rows.iter().map(|r| r.label.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    if classes.len() < 2 {
        bail!(
            "{}: column `{}` holds only one class ({}); classification needs at least 2",
            train.display(),
            columns.label,
            classes.first().map_or(String::new(), |c| format!("`{c}`"))
        );
    }
    let index = |r: &Row| classes.binary_search(&r.label).ok();
    let train_examples =
        train_rows.iter().map(|r| Example { text: r.text.clone(), label: index(r).unwrap() }).collect();
    let mut test_examples = Vec::with_capacity(test_rows.len());
    for r in &test_rows {
        let label = index(r).with_context(|| {
            format!(
                "{} line {}: label `{}` does not occur in the training file {} (its classes: {})",
                test.display(),
                r.line,
                r.label,
                train.display(),
                classes.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
            )
        })?;
        test_examples.push(Example { text: r.text.clone(), label });
    }
    Ok(Dataset { name: train.display().to_string(), classes, train: train_examples, test: test_examples })
}

/// Where the data of a classification run comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The Rotten Tomatoes snippets in this folder.
    RtSentiment(PathBuf),
    Files {
        train: PathBuf,
        test: PathBuf,
        columns: Columns,
    },
}

impl Source {
    pub fn load(&self) -> Result<Dataset> {
        match self {
            Source::RtSentiment(dir) => rt_sentiment(dir),
            Source::Files { train, test, columns } => from_files(train, test, columns),
        }
    }
}
