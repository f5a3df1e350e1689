//! Hugging Face `config.json` for the BERT family: one struct for `bert`, `roberta` and
//! `distilbert`, read from each family's own field names.
//!
//! The original JSON object is kept, so that a saved checkpoint carries every field the
//! user's config had (ids, task labels, anything we do not interpret) and changes only what
//! distil changed.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

/// The architecture family: decides key names, position ids and head layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Bert,
    Roberta,
    DistilBert,
}

impl Family {
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Bert => "bert",
            Family::Roberta => "roberta",
            Family::DistilBert => "distilbert",
        }
    }

    /// The class transformers instantiates for a checkpoint with an MLM head.
    pub fn masked_lm_class(self) -> &'static str {
        match self {
            Family::Bert => "BertForMaskedLM",
            Family::Roberta => "RobertaForMaskedLM",
            Family::DistilBert => "DistilBertForMaskedLM",
        }
    }

    /// The class transformers instantiates for a sequence classifier.
    pub fn sequence_classification_class(self) -> &'static str {
        match self {
            Family::Bert => "BertForSequenceClassification",
            Family::Roberta => "RobertaForSequenceClassification",
            Family::DistilBert => "DistilBertForSequenceClassification",
        }
    }

    /// The class transformers instantiates for an encoder without head.
    pub fn base_class(self) -> &'static str {
        match self {
            Family::Bert => "BertModel",
            Family::Roberta => "RobertaModel",
            Family::DistilBert => "DistilBertModel",
        }
    }
}

/// The non-linearity of the feed-forward block and of the MLM transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU, with erf.
    Gelu,
    /// GELU's tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    Relu,
}

impl std::fmt::Display for Activation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Activation::Gelu => "gelu (erf)",
            Activation::GeluTanh => "gelu (tanh approximation)",
            Activation::Relu => "relu",
        })
    }
}

impl Activation {
    fn parse(name: &str, field: &str) -> Result<Self> {
        Ok(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => bail!(
                "config.json: field `{field}` is \"{other}\"; expected one of \"gelu\", \"gelu_new\", \"gelu_pytorch_tanh\", \"relu\""
            ),
        })
    }
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub activation: Activation,
    pub max_position_embeddings: usize,
    /// 0 where the family has no token-type embeddings (DistilBERT).
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub pad_token_id: u32,
    pub tie_word_embeddings: bool,
    /// DistilBERT's fixed sinusoidal position table instead of a learned one.
    pub sinusoidal_positions: bool,
    pub hidden_dropout: f64,
    pub attention_dropout: f64,
    /// The JSON object as read, so that saving preserves fields distil does not use.
    pub raw: Map<String, Value>,
}

/// Reads typed fields out of the raw JSON with messages that name the field.
struct Fields<'a> {
    map: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|x| Some(x as usize))
                .with_context(|| format!("config.json: field `{key}` is {v}; expected a non-negative integer")),
        }
    }
    fn usize(&self, key: &str) -> Result<usize> {
        self.usize_opt(key)?
            .with_context(|| format!("config.json: field `{key}` is missing; expected a non-negative integer"))
    }
    fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        Ok(self.usize_opt(key)?.unwrap_or(default))
    }
    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_f64().with_context(|| format!("config.json: field `{key}` is {v}; expected a number")),
        }
    }
    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => {
                v.as_bool().with_context(|| format!("config.json: field `{key}` is {v}; expected true or false"))
            }
        }
    }
    fn str_or<'b>(&'b self, key: &str, default: &'b str) -> Result<&'b str> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_str().with_context(|| format!("config.json: field `{key}` is {v}; expected a string")),
        }
    }
}

impl ModelConfig {
    /// Reads `DIR/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            bail!("model directory {} does not exist or is not a directory", dir.display());
        }
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!("cannot read {}: a Hugging Face model directory needs a config.json", path.display())
        })?;
        Self::from_json_str(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn from_json_str(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text).context("config.json is not valid JSON")?;
        let Value::Object(raw) = value else {
            bail!("config.json: expected a JSON object at the top level");
        };
        Self::from_map(raw)
    }

    pub fn from_map(raw: Map<String, Value>) -> Result<Self> {
        let f = Fields { map: &raw };
        let model_type = match raw.get("model_type") {
            Some(Value::String(s)) => s.clone(),
            Some(v) => bail!("config.json: field `model_type` is {v}; expected a string"),
            None => {
                bail!("config.json: field `model_type` is missing; expected \"bert\", \"roberta\" or \"distilbert\"")
            }
        };
        let cfg = match model_type.as_str() {
            "bert" | "roberta" => {
                let family = if model_type == "bert" { Family::Bert } else { Family::Roberta };
                let default_pad = if family == Family::Roberta { 1 } else { 0 };
                ModelConfig {
                    family,
                    vocab_size: f.usize("vocab_size")?,
                    hidden_size: f.usize("hidden_size")?,
                    num_layers: f.usize("num_hidden_layers")?,
                    num_heads: f.usize("num_attention_heads")?,
                    intermediate_size: f.usize("intermediate_size")?,
                    activation: Activation::parse(f.str_or("hidden_act", "gelu")?, "hidden_act")?,
                    max_position_embeddings: f.usize_or("max_position_embeddings", 512)?,
                    type_vocab_size: f.usize_or("type_vocab_size", 2)?,
                    layer_norm_eps: f.f64_or("layer_norm_eps", 1e-12)?,
                    pad_token_id: f.usize_or("pad_token_id", default_pad)? as u32,
                    tie_word_embeddings: f.bool_or("tie_word_embeddings", true)?,
                    sinusoidal_positions: false,
                    hidden_dropout: f.f64_or("hidden_dropout_prob", 0.1)?,
                    attention_dropout: f.f64_or("attention_probs_dropout_prob", 0.1)?,
                    raw: Map::new(),
                }
            }
            "distilbert" => ModelConfig {
                family: Family::DistilBert,
                vocab_size: f.usize_or("vocab_size", 30522)?,
                hidden_size: f.usize_or("dim", 768)?,
                num_layers: f.usize_or("n_layers", 6)?,
                num_heads: f.usize_or("n_heads", 12)?,
                intermediate_size: f.usize_or("hidden_dim", 3072)?,
                activation: Activation::parse(f.str_or("activation", "gelu")?, "activation")?,
                max_position_embeddings: f.usize_or("max_position_embeddings", 512)?,
                type_vocab_size: 0,
                // DistilBERT's modules hard-code this epsilon.
                layer_norm_eps: 1e-12,
                pad_token_id: f.usize_or("pad_token_id", 0)? as u32,
                tie_word_embeddings: f.bool_or("tie_word_embeddings", true)?,
                sinusoidal_positions: f.bool_or("sinusoidal_pos_embds", false)?,
                hidden_dropout: f.f64_or("dropout", 0.1)?,
                attention_dropout: f.f64_or("attention_dropout", 0.1)?,
                raw: Map::new(),
            },
            other => bail!(
                "config.json: `model_type` is \"{other}\"; distil supports \"bert\", \"roberta\" and \"distilbert\""
            ),
        };
        let cfg = ModelConfig { raw, ..cfg };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        let positive = [
            ("vocabulary size", self.vocab_size),
            ("hidden size", self.hidden_size),
            ("number of attention heads", self.num_heads),
            ("intermediate size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (what, v) in positive {
            if v == 0 {
                bail!("config.json: the {what} is 0; expected a positive integer");
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_heads) {
            bail!(
                "config.json: hidden size {} is not a multiple of the number of heads {}",
                self.hidden_size,
                self.num_heads
            );
        }
        if self.pad_token_id as usize >= self.vocab_size {
            bail!(
                "config.json: pad_token_id {} is outside the vocabulary of {} tokens",
                self.pad_token_id,
                self.vocab_size
            );
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// RoBERTa counts positions from `padding_idx + 1`, so its table has two rows that are
    /// never used by real tokens; the usable length is smaller than the table.
    pub fn max_sequence_length(&self) -> usize {
        match self.family {
            Family::Roberta => self.max_position_embeddings - self.pad_token_id as usize - 1,
            _ => self.max_position_embeddings,
        }
    }

    /// The JSON written next to saved weights: the original fields, with the sizes distil may
    /// have changed written back under the family's own names.
    pub fn to_json(&self, with_head: bool) -> Value {
        let mut map = self.raw.clone();
        let mut set = |k: &str, v: Value| {
            map.insert(k.to_string(), v);
        };
        set("model_type", self.family.model_type().into());
        let arch = if with_head { self.family.masked_lm_class() } else { self.family.base_class() };
        set("architectures", Value::Array(vec![arch.into()]));
        set("vocab_size", self.vocab_size.into());
        set("pad_token_id", self.pad_token_id.into());
        set("tie_word_embeddings", self.tie_word_embeddings.into());
        set("max_position_embeddings", self.max_position_embeddings.into());
        match self.family {
            Family::Bert | Family::Roberta => {
                set("hidden_size", self.hidden_size.into());
                set("num_hidden_layers", self.num_layers.into());
                set("num_attention_heads", self.num_heads.into());
                set("intermediate_size", self.intermediate_size.into());
                set("type_vocab_size", self.type_vocab_size.into());
                set("layer_norm_eps", self.layer_norm_eps.into());
                set("hidden_dropout_prob", self.hidden_dropout.into());
                set("attention_probs_dropout_prob", self.attention_dropout.into());
            }
            Family::DistilBert => {
                set("dim", self.hidden_size.into());
                set("n_layers", self.num_layers.into());
                set("n_heads", self.num_heads.into());
                set("hidden_dim", self.intermediate_size.into());
                // Readers regenerate the position table when this is true (trap 7).
                set("sinusoidal_pos_embds", self.sinusoidal_positions.into());
                set("dropout", self.hidden_dropout.into());
                set("attention_dropout", self.attention_dropout.into());
            }
        }
        Value::Object(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distilbert_fields_and_defaults() {
        let c = ModelConfig::from_json_str(
            r#"{"model_type":"distilbert","dim":32,"n_heads":4,"n_layers":2,"hidden_dim":50,"vocab_size":40,"activation":"relu"}"#,
        )
        .unwrap();
        assert_eq!(c.family, Family::DistilBert);
        assert_eq!((c.hidden_size, c.num_heads, c.num_layers, c.intermediate_size), (32, 4, 2, 50));
        assert_eq!(c.activation, Activation::Relu);
        assert_eq!(c.type_vocab_size, 0);
        assert_eq!(c.layer_norm_eps, 1e-12);
    }

    #[test]
    fn errors_name_the_field() {
        let e = ModelConfig::from_json_str(r#"{"model_type":"gpt2"}"#).unwrap_err();
        assert!(format!("{e:#}").contains("gpt2"));
        let e = ModelConfig::from_json_str(r#"{"model_type":"bert","hidden_size":8}"#).unwrap_err();
        assert!(format!("{e:#}").contains("vocab_size"), "{e:#}");
        let e = ModelConfig::from_json_str(
            r#"{"model_type":"bert","vocab_size":9,"hidden_size":8,"num_hidden_layers":1,"num_attention_heads":3,"intermediate_size":4}"#,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("multiple"), "{e:#}");
        let e = ModelConfig::from_json_str(
            r#"{"model_type":"bert","vocab_size":9,"hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":4,"hidden_act":"swish"}"#,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("hidden_act"), "{e:#}");
    }
}
