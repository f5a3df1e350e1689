//! From tokenised text to training sequences, as DistilBERT's data preparation does it: every
//! text is wrapped in the start and end tokens; a text longer than the model's maximum is cut
//! into pieces of at most that length, each wrapped again; sequences shorter than `min_len`
//! tokens (the reference keeps more than 11: `min_len` 12) or with a share of unknown tokens of
//! at least `max_unk` are dropped. Document mode packs consecutive lines of a document into one
//! sequence while they fit.

use anyhow::Result;

/// The cleaning rules, over lengths that count the start and end tokens (as the reference).
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub max_len: usize,
    pub min_len: usize,
    pub max_unk: f64,
    pub start: u32,
    pub end: u32,
    pub unk: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    TooShort,
    TooManyUnknown,
}

impl Rules {
    /// Room for text in one sequence, between its start and end tokens.
    pub fn capacity(&self) -> usize {
        self.max_len - 2
    }

    /// `content` wrapped in the start and end tokens.
    pub fn wrap(&self, content: &[u32], out: &mut Vec<u32>) {
        out.clear();
        out.push(self.start);
        out.extend_from_slice(content);
        out.push(self.end);
    }

    /// Whether a wrapped sequence is kept; the unknown share is over all its tokens.
    pub fn verdict(&self, seq: &[u32]) -> Verdict {
        if seq.len() < self.min_len {
            return Verdict::TooShort;
        }
        if let Some(unk) = self.unk {
            let unknown = seq.iter().filter(|&&t| t == unk).count();
            if unknown as f64 >= self.max_unk * seq.len() as f64 {
                return Verdict::TooManyUnknown;
            }
        }
        Verdict::Keep
    }
}

/// Gathers the lines of one document into sequences of at most `capacity` text tokens. A line
/// that does not fit in what is left starts a new sequence; a line longer than `capacity` is cut
/// into full pieces and its last piece stays open for the lines after it. Line mode is a
/// document per line.
pub struct Packer {
    capacity: usize,
    pack: Vec<u32>,
    /// A line was added since the last flush (so that a line with no tokens still yields a
    /// sequence, which the rules then drop as too short, and is counted).
    open: bool,
    /// Lines longer than `capacity`, which had to be cut.
    pub split_lines: u64,
}

impl Packer {
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "a sequence needs room for at least one token");
        Packer { capacity, pack: Vec::new(), open: false, split_lines: 0 }
    }

    pub fn add_line(&mut self, content: &[u32], emit: &mut impl FnMut(&[u32]) -> Result<()>) -> Result<()> {
        if !self.pack.is_empty() && self.pack.len() + content.len() > self.capacity {
            self.flush(emit)?;
        }
        let mut rest = content;
        if rest.len() > self.capacity {
            self.split_lines += 1;
            while rest.len() > self.capacity {
                let (piece, tail) = rest.split_at(self.capacity);
                emit(piece)?;
                rest = tail;
            }
        }
        self.pack.extend_from_slice(rest);
        self.open = true;
        Ok(())
    }

    pub fn end_document(&mut self, emit: &mut impl FnMut(&[u32]) -> Result<()>) -> Result<()> {
        self.flush(emit)
    }

    fn flush(&mut self, emit: &mut impl FnMut(&[u32]) -> Result<()>) -> Result<()> {
        let open = std::mem::replace(&mut self.open, false);
        let result = if open { emit(&self.pack) } else { Ok(()) };
        self.pack.clear();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules = Rules { max_len: 6, min_len: 4, max_unk: 0.5, start: 100, end: 101, unk: Some(1) };

    fn run(docs: &[&[&[u32]]]) -> Vec<Vec<u32>> {
        let mut out = Vec::new();
        let mut packer = Packer::new(RULES.capacity());
        let mut emit = |s: &[u32]| {
            out.push(s.to_vec());
            Ok(())
        };
        for doc in docs {
            for line in doc.iter() {
                packer.add_line(line, &mut emit).unwrap();
            }
            packer.end_document(&mut emit).unwrap();
        }
        out
    }

    #[test]
    fn packs_lines_while_they_fit_and_cuts_long_ones() {
        let docs: &[&[&[u32]]] = &[&[&[1, 2], &[3], &[4, 5]], &[&[6, 7, 8, 9, 10, 11, 12, 13, 14], &[15]], &[&[]]];
        let out = run(docs);
        assert_eq!(out, vec![vec![1, 2, 3], vec![4, 5], vec![6, 7, 8, 9], vec![10, 11, 12, 13], vec![14, 15], vec![]]);
    }

    #[test]
    fn line_mode_is_one_document_per_line() {
        let out = run(&[&[&[1, 2, 3, 4, 5, 6, 7, 8, 9]], &[&[10]]]);
        assert_eq!(out, vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8], vec![9], vec![10]]);
    }

    #[test]
    fn verdicts() {
        let mut seq = Vec::new();
        RULES.wrap(&[5, 6], &mut seq);
        assert_eq!(seq, [100, 5, 6, 101]);
        assert_eq!(RULES.verdict(&seq), Verdict::Keep);
        assert_eq!(RULES.verdict(&[100, 5, 101]), Verdict::TooShort);
        assert_eq!(RULES.verdict(&[100, 1, 1, 101]), Verdict::TooManyUnknown);
        assert_eq!(RULES.verdict(&[100, 1, 5, 5, 101]), Verdict::Keep);
    }
}
