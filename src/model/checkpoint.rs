//! Hugging Face checkpoints on disk: each family's tensor key names, strict loading from
//! safetensors (single or sharded) and `pytorch_model.bin`, and saving.
//!
//! Loading is strict: every tensor the model needs must be there with its shape, and every
//! tensor in the files must be either used or on an explicit list of known-unused ones
//! (pooler, buffers, other task heads), which the load report names.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use super::config::{Family, ModelConfig};
use super::encoder::{parameter_shapes, sinusoidal_table, Weights};

/// Files that travel with a model's weights and make it usable as a tokenizer too.
pub const TOKENIZER_FILES: &[&str] =
    &["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt"];

/// The family's name for the base model in keys of a checkpoint with a head.
pub fn base_prefix(family: Family) -> &'static str {
    match family {
        Family::Bert => "bert.",
        Family::Roberta => "roberta.",
        Family::DistilBert => "distilbert.",
    }
}

/// The family's key (without the base prefix) for a canonical name. Head keys are top level.
pub fn hf_key(family: Family, canonical: &str) -> String {
    let parts: Vec<&str> = canonical.split('.').collect();
    let bert_like = family != Family::DistilBert;
    let key = match parts.as_slice() {
        ["embeddings", "word"] => "embeddings.word_embeddings.weight".to_string(),
        ["embeddings", "position"] => "embeddings.position_embeddings.weight".to_string(),
        ["embeddings", "token_type"] => "embeddings.token_type_embeddings.weight".to_string(),
        ["embeddings", "norm", p] => format!("embeddings.LayerNorm.{p}"),
        ["layers", l, "attention", proj, p] if bert_like => match *proj {
            "output" => format!("encoder.layer.{l}.attention.output.dense.{p}"),
            _ => format!("encoder.layer.{l}.attention.self.{proj}.{p}"),
        },
        ["layers", l, "attention_norm", p] if bert_like => {
            format!("encoder.layer.{l}.attention.output.LayerNorm.{p}")
        }
        ["layers", l, "ffn", "up", p] if bert_like => {
            format!("encoder.layer.{l}.intermediate.dense.{p}")
        }
        ["layers", l, "ffn", "down", p] if bert_like => {
            format!("encoder.layer.{l}.output.dense.{p}")
        }
        ["layers", l, "ffn_norm", p] if bert_like => {
            format!("encoder.layer.{l}.output.LayerNorm.{p}")
        }
        ["layers", l, "attention", proj, p] => {
            let lin = match *proj {
                "query" => "q_lin",
                "key" => "k_lin",
                "value" => "v_lin",
                _ => "out_lin",
            };
            format!("transformer.layer.{l}.attention.{lin}.{p}")
        }
        ["layers", l, "attention_norm", p] => format!("transformer.layer.{l}.sa_layer_norm.{p}"),
        ["layers", l, "ffn", "up", p] => format!("transformer.layer.{l}.ffn.lin1.{p}"),
        ["layers", l, "ffn", "down", p] => format!("transformer.layer.{l}.ffn.lin2.{p}"),
        ["layers", l, "ffn_norm", p] => format!("transformer.layer.{l}.output_layer_norm.{p}"),
        ["head", rest @ ..] => {
            let rest = rest.join(".");
            let mapped = match (family, rest.as_str()) {
                (Family::Bert, "transform.weight" | "transform.bias") => {
                    format!("cls.predictions.transform.dense.{}", &rest["transform.".len()..])
                }
                (Family::Bert, r) if r.starts_with("norm.") => {
                    format!("cls.predictions.transform.LayerNorm.{}", &r["norm.".len()..])
                }
                (Family::Bert, "decoder.weight") => "cls.predictions.decoder.weight".into(),
                (Family::Bert, "bias") => "cls.predictions.bias".into(),
                (Family::Roberta, r) if r.starts_with("transform.") => {
                    format!("lm_head.dense.{}", &r["transform.".len()..])
                }
                (Family::Roberta, r) if r.starts_with("norm.") => {
                    format!("lm_head.layer_norm.{}", &r["norm.".len()..])
                }
                (Family::Roberta, "decoder.weight") => "lm_head.decoder.weight".into(),
                (Family::Roberta, "bias") => "lm_head.bias".into(),
                (Family::DistilBert, r) if r.starts_with("transform.") => {
                    format!("vocab_transform.{}", &r["transform.".len()..])
                }
                (Family::DistilBert, r) if r.starts_with("norm.") => {
                    format!("vocab_layer_norm.{}", &r["norm.".len()..])
                }
                (Family::DistilBert, "decoder.weight") => "vocab_projector.weight".into(),
                (Family::DistilBert, "bias") => "vocab_projector.bias".into(),
                _ => unreachable!("no key for head tensor {canonical}"),
            };
            return mapped;
        }
        _ => unreachable!("no key for tensor {canonical}"),
    };
    key
}

/// The keys `save` writes for a canonical name: with the family's base prefix when the model
/// has a head (as `*ForMaskedLM` does), without when it has none (as `BertModel` does). An
/// untied output bias is written under both of its names, as transformers writes it (its
/// untied models read the decoder's own bias).
pub fn saved_keys(config: &ModelConfig, canonical: &str, has_head: bool) -> Vec<String> {
    let family = config.family;
    let key = hf_key(family, canonical);
    let key = if has_head && !is_head_key(family, &key) { format!("{}{key}", base_prefix(family)) } else { key };
    let mut keys = vec![key.clone()];
    if canonical == "head.bias" && !config.tie_word_embeddings {
        keys.extend(aliases(family, &key));
    }
    keys
}

/// Other names under which the same tensor is stored by some writers.
fn aliases(family: Family, key: &str) -> Vec<String> {
    match (family, key) {
        // The MLM bias is shared with the decoder's bias; either name may be the one saved.
        (Family::Bert, "cls.predictions.bias") => vec!["cls.predictions.decoder.bias".into()],
        (Family::Roberta, "lm_head.bias") => vec!["lm_head.decoder.bias".into()],
        // Checkpoints converted from TensorFlow name LayerNorm parameters gamma and beta.
        _ if key.contains("LayerNorm.weight") => {
            vec![key.replace("LayerNorm.weight", "LayerNorm.gamma")]
        }
        _ if key.contains("LayerNorm.bias") => {
            vec![key.replace("LayerNorm.bias", "LayerNorm.beta")]
        }
        _ => vec![],
    }
}

fn is_head_key(family: Family, key: &str) -> bool {
    match family {
        Family::Bert => key.starts_with("cls.predictions."),
        Family::Roberta => key.starts_with("lm_head."),
        Family::DistilBert => key.starts_with("vocab_"),
    }
}

/// Tensors that checkpoints carry but the encoder does not use: buffers, the pooler, the
/// next-sentence head and task heads. Loading names them in its report instead of failing.
fn is_known_unused(key: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "pooler.",
        "cls.seq_relationship.",
        "classifier.",
        "pre_classifier.",
        "qa_outputs.",
        // AntiBERTy's species, chain and graft classifiers.
        "cls.species.",
        "cls.chain.",
        "cls.graft.",
    ];
    const SUFFIXES: &[&str] = &["position_ids", "embeddings.token_type_ids"];
    PREFIXES.iter().any(|p| key.starts_with(p)) || SUFFIXES.iter().any(|s| key.ends_with(s))
}

/// What loading found beside the tensors it used.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub files: Vec<PathBuf>,
    /// Known-unused tensors that were skipped, with their original key.
    pub ignored: Vec<String>,
    /// Decoder weights stored although the config ties them to the word embeddings.
    pub tied_duplicates: Vec<String>,
    /// Tensors replaced by a computed value (DistilBERT's sinusoidal positions).
    pub regenerated: Vec<String>,
}

/// A checkpoint read from disk.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub weights: Weights,
    pub has_head: bool,
    pub report: LoadReport,
    /// The known-unused tensors themselves (pooler, task heads), by key without the base
    /// prefix: a sequence classifier reads its head from here.
    pub unused: Weights,
}

/// The weight files of a model directory, in the order transformers prefers them.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    for index in ["model.safetensors.index.json", "pytorch_model.bin.index.json"] {
        let path = dir.join(index);
        if path.is_file() {
            let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .with_context(|| format!("{}: expected an object `weight_map`", path.display()))?;
            let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
            if shards.is_empty() {
                bail!("{}: `weight_map` names no shard files", path.display());
            }
            return Ok(shards.into_iter().map(|s| dir.join(s)).collect());
        }
    }
    let bin = dir.join("pytorch_model.bin");
    if bin.is_file() {
        return Ok(vec![bin]);
    }
    bail!(
        "no weights in {}: expected model.safetensors, a sharded model.safetensors.index.json, or pytorch_model.bin",
        dir.display()
    )
}

fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    if !path.is_file() {
        bail!("weight file {} is missing", path.display());
    }
    let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    let tensors = if is_safetensors {
        candle_core::safetensors::load(path, &Device::Cpu)
            .with_context(|| {
                format!("cannot read safetensors file {} (truncated, or not a safetensors file)", path.display())
            })?
            .into_iter()
            .collect()
    } else {
        candle_core::pickle::read_all(path)
            .with_context(|| format!("cannot read PyTorch weight file {}", path.display()))?
    };
    Ok(tensors)
}

impl Checkpoint {
    /// Reads `config.json` and the weights of `dir` strictly, into float32 on `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config = ModelConfig::from_dir(dir)?;
        let files = weight_files(dir)?;
        let family = config.family;
        let prefix = base_prefix(family);
        // key (prefix stripped) → (tensor, key as stored, file)
        let mut stored: HashMap<String, (Tensor, String, usize)> = HashMap::new();
        for (fi, file) in files.iter().enumerate() {
            for (key, tensor) in read_tensors(file)? {
                let bare = key.strip_prefix(prefix).unwrap_or(&key).to_string();
                stored.insert(bare, (tensor, key, fi));
            }
        }
        let has_head = stored.keys().any(|k| is_head_key(family, k) && !is_known_unused(k));
        let where_ = || {
            if files.len() == 1 {
                files[0].display().to_string()
            } else {
                format!("the {} shards of {}", files.len(), dir.display())
            }
        };

        let mut weights = Weights::new();
        let mut missing = Vec::new();
        let mut report = LoadReport { files: files.clone(), ..Default::default() };
        for (name, shape) in parameter_shapes(&config, has_head) {
            let key = hf_key(family, &name);
            let found = std::iter::once(key.clone())
                .chain(aliases(family, &key))
                .find_map(|k| stored.remove(&k).map(|t| (k, t)));
            let Some((_, (tensor, stored_key, fi))) = found else {
                missing.push(format!(
                    "`{prefix_if}{key}` {shape:?}",
                    prefix_if = if is_head_key(family, &key) { "" } else { prefix }
                ));
                continue;
            };
            for alias in aliases(family, &key) {
                stored.remove(&alias);
            }
            if tensor.dims() != shape.as_slice() {
                bail!(
                    "tensor `{stored_key}` in {} has shape {:?}; the config expects {:?}",
                    files[fi].display(),
                    tensor.dims(),
                    shape
                );
            }
            let tensor = if name == "embeddings.position" && config.sinusoidal_positions {
                report.regenerated.push(stored_key);
                sinusoidal_table(shape[0], shape[1], &Device::Cpu)?
            } else {
                tensor.to_dtype(DType::F32)?
            };
            weights.insert(name, tensor.to_device(device)?);
        }
        if !missing.is_empty() {
            bail!("{} lacks {} tensor(s) the config requires: {}", where_(), missing.len(), missing.join(", "));
        }
        let decoder_key = hf_key(family, "head.decoder.weight");
        let mut unexpected = Vec::new();
        let mut leftovers: Vec<_> = stored.into_iter().collect();
        leftovers.sort_by(|a, b| a.0.cmp(&b.0));
        let mut unused = Weights::new();
        for (bare, (tensor, key, _)) in leftovers {
            if config.tie_word_embeddings && bare == decoder_key {
                report.tied_duplicates.push(key);
            } else if is_known_unused(&bare) {
                report.ignored.push(key);
                unused.insert(bare, tensor.to_dtype(DType::F32)?.to_device(device)?);
            } else {
                unexpected.push(format!("`{key}`"));
            }
        }
        if !unexpected.is_empty() {
            bail!(
                "{} holds {} tensor(s) that a {} model does not have: {}",
                where_(),
                unexpected.len(),
                family.model_type(),
                unexpected.join(", ")
            );
        }
        Ok(Checkpoint { dir: dir.to_path_buf(), config, weights, has_head, report, unused })
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so that a failure never
/// leaves a partial file where a good one was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot move {} into place", path.display()))
}

/// Saves an HF checkpoint into `dir`: `config.json`, `model.safetensors` (under the family's
/// key names; the decoder omitted when tied, as transformers writes it) and the tokenizer files
/// found in `tokenizer_from`.
pub fn save(dir: &Path, config: &ModelConfig, weights: &Weights, tokenizer_from: Option<&Path>) -> Result<()> {
    let has_head = weights.contains_key("head.bias");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    for (name, shape) in parameter_shapes(config, has_head) {
        let tensor = weights.get(&name).with_context(|| format!("cannot save: the model has no tensor `{name}`"))?;
        if tensor.dims() != shape.as_slice() {
            bail!("cannot save: tensor `{name}` has shape {:?}, the config says {:?}", tensor.dims(), shape);
        }
        for key in saved_keys(config, &name, has_head) {
            tensors.insert(key, tensor.to_device(&Device::Cpu)?.contiguous()?);
        }
    }
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let bytes = safetensors::serialize(tensors.iter().map(|(k, v)| (k.clone(), v)), Some(metadata))
        .context("cannot serialise the weights")?;
    write_atomic(&dir.join("model.safetensors"), &bytes)?;
    let json = serde_json::to_string_pretty(&config.to_json(has_head))?;
    write_atomic(&dir.join("config.json"), json.as_bytes())?;
    if let Some(src) = tokenizer_from {
        copy_tokenizer_files(src, dir)?;
    }
    Ok(())
}

/// Copies the tokenizer files that exist in `from` into `to`.
pub fn copy_tokenizer_files(from: &Path, to: &Path) -> Result<()> {
    if from == to {
        return Ok(());
    }
    for name in TOKENIZER_FILES {
        let src = from.join(name);
        if src.is_file() {
            let bytes = std::fs::read(&src).with_context(|| format!("cannot read {}", src.display()))?;
            write_atomic(&to.join(name), &bytes)?;
        }
    }
    Ok(())
}

/// Parameter counts by part: embeddings, encoder layers, MLM head (the tied decoder counted
/// once, under the embeddings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParameterCounts {
    pub embeddings: usize,
    pub encoder: usize,
    pub head: usize,
}

impl ParameterCounts {
    pub fn of(weights: &Weights) -> Self {
        let mut c = ParameterCounts { embeddings: 0, encoder: 0, head: 0 };
        for (name, t) in weights {
            let n = t.elem_count();
            if name.starts_with("embeddings.") {
                c.embeddings += n
            } else if name.starts_with("head.") {
                c.head += n
            } else {
                c.encoder += n
            }
        }
        c
    }

    pub fn total(&self) -> usize {
        self.embeddings + self.encoder + self.head
    }
}
