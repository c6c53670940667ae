//! The training config: one TOML file with `[model]`, `[lora]`, `[data]` and `[train]`, keys named as Unsloth,
//! TRL and Hugging Face `TrainingArguments` name them. `--set section.key=value` overrides any key before the
//! file is checked; an unknown section or key is an error with the closest known name.
//!
//! Relative paths (model, data files, output_dir, init_adapter) are taken from the working directory, as
//! transformers and Axolotl do.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::template::closest;
use crate::data::{Format, Packing};
use crate::error::{Error, Result};
use crate::lora::{LoraConfig, TargetModule};
use crate::train::optim::{OptimConfig, OptimKind};
use crate::train::schedule::SchedulerKind;

/// The config resolved: every choice typed and checked once, paths as paths. This is what the recipe reads;
/// [`TrainConfig`] is only the file's mirror.
#[derive(Clone, Debug, PartialEq)]
pub struct RunConfig {
    /// A GGUF file, a Hugging Face folder, or a hub id.
    pub model: String,
    pub max_seq_length: usize,
    pub load_in_4bit: bool,
    pub tokenizer_pre: Option<String>,
    pub lora: LoraConfig,
    pub init_adapter: Option<InitAdapter>,
    pub data: DataConfig,
    pub output_dir: PathBuf,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    pub accumulation: usize,
    pub length: TrainLength,
    pub learning_rate: f64,
    /// The learning rate of embed_tokens/lm_head trained in full (the base rate when the file leaves it at 0).
    pub embedding_learning_rate: f64,
    pub warmup_steps: usize,
    pub warmup_ratio: f64,
    pub scheduler: SchedulerKind,
    pub optim: OptimConfig,
    /// 0: no clipping.
    pub max_grad_norm: f64,
    pub gradient_checkpointing: bool,
    pub logging_steps: usize,
    /// 0: evaluate only at the end.
    pub eval_steps: usize,
    /// 0: save only the final adapter.
    pub save_steps: usize,
    /// 0: keep every checkpoint.
    pub save_total_limit: usize,
    pub seed: u64,
    pub tensorboard: bool,
    /// Where the run computes: `cpu`, `auto`, `gpu`, `gpu:N` or `gpu:NAME` (the CLI opens it; a checkpoint
    /// resumes on any device).
    pub device: String,
    /// Keep the saved activations in f16 on a GPU that supports it.
    pub f16_activations: bool,
    /// The file's config as TOML, saved with the run and every checkpoint.
    pub toml: String,
}

/// An earlier adapter to start from.
#[derive(Clone, Debug, PartialEq)]
pub struct InitAdapter {
    pub dir: PathBuf,
    pub mode: InitAdapterMode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitAdapterMode {
    /// Fold the adapter into the frozen base and train a new LoRA on top (the original recipe).
    Merge,
    /// Keep training the adapter itself.
    Continue,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DataConfig {
    pub train_files: Vec<PathBuf>,
    pub validation_files: Vec<PathBuf>,
    pub format: Format,
    pub add_eos: bool,
    pub train_on_responses_only: bool,
    pub validation_split: f64,
    pub packing: Packing,
    pub shuffle: bool,
    pub split_paragraphs: bool,
    /// Only the first N records of the training files.
    pub max_samples: Option<usize>,
}

/// How long to train.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TrainLength {
    Epochs(f64),
    Steps(usize),
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub model: ModelSection,
    pub lora: LoraSection,
    pub data: DataSection,
    pub train: TrainSection,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// A GGUF file, a Hugging Face folder, or a hub id.
    pub path: String,
    /// Examples are cut to this many tokens; packed rows are this long.
    pub max_seq_length: usize,
    /// Keep the frozen base in its 4-bit blocks (QLoRA); `false` converts it to f32.
    pub load_in_4bit: bool,
    /// Replaces a GGUF's pre-tokenizer name (e.g. "gpt-2"); empty keeps the file's.
    pub tokenizer_pre: String,
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection { path: String::new(), max_seq_length: 2048, load_in_4bit: false, tokenizer_pre: String::new() }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LoraSection {
    pub r: usize,
    pub lora_alpha: f32,
    pub lora_dropout: f32,
    pub use_rslora: bool,
    /// q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj; `embed_tokens` and `lm_head` train those
    /// matrices in full (PEFT's modules_to_save).
    pub target_modules: Vec<String>,
    /// A PEFT adapter folder to start from (e.g. the CPT run's `adapter/`); empty for none.
    pub init_adapter: String,
    /// `merge`: fold init_adapter into the frozen base and train a new LoRA on top (the original recipe);
    /// `continue`: keep training init_adapter itself (its r, alpha and targets win over this section's).
    pub init_adapter_mode: String,
}

impl Default for LoraSection {
    fn default() -> Self {
        LoraSection {
            r: 16,
            lora_alpha: 32.0,
            lora_dropout: 0.0,
            use_rslora: false,
            target_modules: TargetModule::ALL.iter().map(|t| t.name().to_string()).collect(),
            init_adapter: String::new(),
            init_adapter_mode: "merge".into(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// Files or globs (`*`, `?` in the file name): .jsonl, .json, .csv, .parquet, .txt.
    pub train_files: Vec<String>,
    /// Files for evaluation; when empty, `validation_split` of the training examples are held out.
    pub validation_files: Vec<String>,
    /// `text` | `alpaca` | `chat`.
    pub format: String,
    /// For `text`: `{field}` placeholders filled from each record (`{{`/`}}` for braces).
    pub text_template: String,
    /// For `chat`: `chatml`, `llama3`, `alpaca` or Jinja source; empty uses the model's own template.
    pub chat_template: String,
    pub add_eos: bool,
    pub train_on_responses_only: bool,
    pub validation_split: f64,
    /// Lay examples end to end in rows of max_seq_length (attention and positions restart at each one); an
    /// example longer than max_seq_length is then split into pieces instead of cut.
    pub packing: bool,
    pub shuffle: bool,
    /// Plain-text files: one record per blank-line-separated paragraph instead of one per file.
    pub split_paragraphs: bool,
    /// Use only the first N records of the training files (0: all).
    pub max_samples: usize,
}

impl Default for DataSection {
    fn default() -> Self {
        DataSection {
            train_files: Vec::new(),
            validation_files: Vec::new(),
            format: "text".into(),
            text_template: "{text}".into(),
            chat_template: String::new(),
            add_eos: true,
            train_on_responses_only: false,
            validation_split: 0.0,
            packing: false,
            shuffle: true,
            split_paragraphs: false,
            max_samples: 0,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    pub output_dir: String,
    pub per_device_train_batch_size: usize,
    /// 0: the training batch size.
    pub per_device_eval_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub num_train_epochs: f64,
    /// > 0 overrides num_train_epochs (as in TrainingArguments; -1 or 0 means "use epochs").
    pub max_steps: i64,
    pub learning_rate: f64,
    /// The learning rate of embed_tokens/lm_head trained in full (Unsloth's); 0: learning_rate.
    pub embedding_learning_rate: f64,
    pub warmup_ratio: f64,
    /// > 0 overrides warmup_ratio.
    pub warmup_steps: usize,
    /// `linear` | `cosine` | `constant`.
    pub lr_scheduler_type: String,
    /// `adamw` | `adamw_8bit` (and TrainingArguments' spellings of them).
    pub optim: String,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    /// 0 disables clipping (the norm is still logged).
    pub max_grad_norm: f64,
    pub gradient_checkpointing: bool,
    pub logging_steps: usize,
    /// 0: evaluate only at the end.
    pub eval_steps: usize,
    /// 0: save only the final adapter.
    pub save_steps: usize,
    /// 0: keep every checkpoint.
    pub save_total_limit: usize,
    pub seed: u64,
    /// `tensorboard` writes event files into output_dir; `none` (or empty) writes only metrics.jsonl.
    pub report_to: Vec<String>,
    /// `cpu` | `auto` | `gpu` | `gpu:N` | `gpu:NAME` (`loft inspect --devices` lists the GPUs).
    pub device: String,
    /// On a GPU with f16 support: keep the saved activations in f16 (half their memory; f32 arithmetic).
    pub f16_activations: bool,
}

impl Default for TrainSection {
    fn default() -> Self {
        TrainSection {
            output_dir: "outputs".into(),
            per_device_train_batch_size: 2,
            per_device_eval_batch_size: 0,
            gradient_accumulation_steps: 4,
            num_train_epochs: 1.0,
            max_steps: -1,
            learning_rate: 2e-4,
            embedding_learning_rate: 0.0,
            warmup_ratio: 0.0,
            warmup_steps: 0,
            lr_scheduler_type: "linear".into(),
            optim: "adamw".into(),
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            max_grad_norm: 1.0,
            gradient_checkpointing: false,
            logging_steps: 1,
            eval_steps: 0,
            save_steps: 0,
            save_total_limit: 0,
            seed: 3407,
            report_to: Vec::new(),
            device: "cpu".into(),
            f16_activations: false,
        }
    }
}

/// Keys a single string may stand for a list of one (`report_to = "tensorboard"`, `train_files = "a.jsonl"`).
const LIST_KEYS: [&str; 4] = ["target_modules", "train_files", "validation_files", "report_to"];

impl TrainConfig {
    /// Reads a config file and applies `--set` overrides (`section.key=value`, the value read as TOML, a bare
    /// word that is not TOML taken as a string), then checks it.
    /// Errors in the file name the file; errors in an override name the `--set`.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let in_file = |e: Error| match e {
            Error::Invalid(message) => Error::format(path, message),
            e @ Error::Hinted { .. } => e.at(path.display()),
            e => e,
        };
        let mut table = parse_table(&text).map_err(in_file)?;
        apply_overrides(&mut table, overrides)?;
        Self::from_table(table).map_err(in_file)
    }

    /// `load` on a string.
    pub fn parse(text: &str, overrides: &[String]) -> Result<Self> {
        let mut table = parse_table(text)?;
        apply_overrides(&mut table, overrides)?;
        Self::from_table(table)
    }

    fn from_table(table: toml::Table) -> Result<Self> {
        let config: TrainConfig = toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| {
            Error::Invalid(format!("config: {}", e.message().lines().collect::<Vec<_>>().join(" ")))
        })?;
        config.resolve()?;
        Ok(config)
    }

    /// The config as TOML (what a checkpoint stores, and `--dry-run` prints).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::Invalid(format!("the config cannot be written as TOML: {e}")))
    }

    /// Checks every value and turns the file's strings into typed choices.
    pub fn resolve(&self) -> Result<RunConfig> {
        let bad = |key: &str, why: &str| Error::Invalid(format!("{key}: {why}"));
        let (m, l, d, t) = (&self.model, &self.lora, &self.data, &self.train);
        if m.path.is_empty() {
            return Err(Error::hinted("model.path is not set", "set [model] path = \"model.gguf\" (or a folder)"));
        }
        if m.max_seq_length < 2 {
            return Err(bad("model.max_seq_length", "must be at least 2"));
        }
        let init_adapter =
            match (l.init_adapter.as_str(), l.init_adapter_mode.as_str()) {
                ("", "merge" | "continue") => None,
                (dir, "merge") => Some(InitAdapter { dir: dir.into(), mode: InitAdapterMode::Merge }),
                (dir, "continue") => Some(InitAdapter { dir: dir.into(), mode: InitAdapterMode::Continue }),
                (_, other) => return Err(Error::hinted(
                    format!("lora.init_adapter_mode = \"{other}\": unknown mode"),
                    "use \"merge\" (a new LoRA on top of the merged adapter) or \"continue\" (train the same adapter)",
                )),
            };
        if d.train_files.is_empty() {
            return Err(Error::hinted("data.train_files is empty", "set [data] train_files = [\"data/*.jsonl\"]"));
        }
        if !(0.0..1.0).contains(&d.validation_split) {
            return Err(bad("data.validation_split", "must be in [0, 1)"));
        }
        let format = match d.format.as_str() {
            "text" => Format::Text { template: d.text_template.clone() },
            "alpaca" => Format::Alpaca,
            "chat" => Format::Chat { chat_template: (!d.chat_template.is_empty()).then(|| d.chat_template.clone()) },
            other => {
                return Err(Error::hinted(
                    format!("data.format = \"{other}\": unknown format"),
                    "use \"text\" (with text_template), \"alpaca\" or \"chat\"",
                ))
            }
        };
        if t.per_device_train_batch_size == 0 {
            return Err(bad("train.per_device_train_batch_size", "must be at least 1"));
        }
        if t.gradient_accumulation_steps == 0 {
            return Err(bad("train.gradient_accumulation_steps", "must be at least 1"));
        }
        let length = if t.max_steps > 0 {
            TrainLength::Steps(t.max_steps as usize)
        } else if t.num_train_epochs > 0.0 && t.num_train_epochs.is_finite() {
            TrainLength::Epochs(t.num_train_epochs)
        } else {
            return Err(bad("train.num_train_epochs", "must be positive when max_steps is not set"));
        };
        let positive = |x: f64| x > 0.0 && x.is_finite();
        if !positive(t.learning_rate) {
            return Err(bad("train.learning_rate", "must be a positive number"));
        }
        if !(positive(t.embedding_learning_rate) || t.embedding_learning_rate == 0.0) {
            return Err(bad("train.embedding_learning_rate", "must be a positive number, or 0 for learning_rate"));
        }
        if !(0.0..=1.0).contains(&t.warmup_ratio) {
            return Err(bad("train.warmup_ratio", "must be in [0, 1]"));
        }
        if !(t.max_grad_norm >= 0.0 && t.max_grad_norm.is_finite()) {
            return Err(bad("train.max_grad_norm", "must be 0 (no clipping) or a positive number"));
        }
        if t.output_dir.is_empty() {
            return Err(bad("train.output_dir", "must be set"));
        }
        let scheduler = SchedulerKind::parse(&t.lr_scheduler_type).ok_or_else(|| {
            Error::hinted(
                format!("train.lr_scheduler_type = \"{}\": unknown schedule", t.lr_scheduler_type),
                "use \"linear\", \"cosine\" or \"constant\"",
            )
        })?;
        let kind = OptimKind::parse(&t.optim).ok_or_else(|| {
            Error::hinted(
                format!("train.optim = \"{}\": unknown optimizer", t.optim),
                format!("use one of: {}", OptimKind::NAMES.join(", ")),
            )
        })?;
        let optim = OptimConfig {
            kind,
            beta1: t.adam_beta1 as f32,
            beta2: t.adam_beta2 as f32,
            eps: t.adam_epsilon as f32,
            weight_decay: t.weight_decay as f32,
        };
        let mut tensorboard = false;
        for r in &t.report_to {
            match r.as_str() {
                "tensorboard" | "all" => tensorboard = true,
                "none" => {}
                _ => {
                    return Err(Error::hinted(
                        format!("train.report_to: unknown target \"{r}\""),
                        "loft writes \"tensorboard\" event files (and always metrics.jsonl); use \"none\" for neither",
                    ))
                }
            }
        }
        let paths = |v: &[String]| v.iter().map(PathBuf::from).collect();
        Ok(RunConfig {
            model: m.path.clone(),
            max_seq_length: m.max_seq_length,
            load_in_4bit: m.load_in_4bit,
            tokenizer_pre: (!m.tokenizer_pre.is_empty()).then(|| m.tokenizer_pre.clone()),
            lora: self.lora_config()?,
            init_adapter,
            data: DataConfig {
                train_files: paths(&d.train_files),
                validation_files: paths(&d.validation_files),
                format,
                add_eos: d.add_eos,
                train_on_responses_only: d.train_on_responses_only,
                validation_split: d.validation_split,
                packing: if d.packing { Packing::Packed } else { Packing::Padded },
                shuffle: d.shuffle,
                split_paragraphs: d.split_paragraphs,
                max_samples: (d.max_samples > 0).then_some(d.max_samples),
            },
            output_dir: PathBuf::from(&t.output_dir),
            batch_size: t.per_device_train_batch_size,
            eval_batch_size: match t.per_device_eval_batch_size {
                0 => t.per_device_train_batch_size,
                n => n,
            },
            accumulation: t.gradient_accumulation_steps,
            length,
            learning_rate: t.learning_rate,
            embedding_learning_rate: if t.embedding_learning_rate > 0.0 {
                t.embedding_learning_rate
            } else {
                t.learning_rate
            },
            warmup_steps: t.warmup_steps,
            warmup_ratio: t.warmup_ratio,
            scheduler,
            optim,
            max_grad_norm: t.max_grad_norm,
            gradient_checkpointing: t.gradient_checkpointing,
            logging_steps: t.logging_steps.max(1),
            eval_steps: t.eval_steps,
            save_steps: t.save_steps,
            save_total_limit: t.save_total_limit,
            seed: t.seed,
            device: t.device.clone(),
            f16_activations: t.f16_activations,
            tensorboard,
            toml: self.to_toml()?,
        })
    }

    /// `[lora]` as PEFT's config: `embed_tokens` and `lm_head` in target_modules train those matrices in full.
    fn lora_config(&self) -> Result<LoraConfig> {
        let l = &self.lora;
        if l.r == 0 {
            return Err(Error::Invalid("lora.r: must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&l.lora_dropout) {
            return Err(Error::Invalid("lora.lora_dropout: must be in [0, 1)".into()));
        }
        if !(l.lora_alpha > 0.0 && l.lora_alpha.is_finite()) {
            return Err(Error::Invalid("lora.lora_alpha: must be a positive number".into()));
        }
        let mut modules = Vec::new();
        let (mut embed, mut head) = (false, false);
        for m in &l.target_modules {
            match m.as_str() {
                "embed_tokens" => embed = true,
                "lm_head" => head = true,
                _ => modules.push(m.clone()),
            }
        }
        let target_modules = LoraConfig::parse_targets(&modules).map_err(|e| match e.hint() {
            Some(hint) => {
                let hint = format!("{hint}, embed_tokens, lm_head");
                e.at("lora.target_modules").with_hint(hint)
            }
            None => e,
        })?;
        Ok(LoraConfig {
            r: l.r,
            lora_alpha: l.lora_alpha,
            lora_dropout: l.lora_dropout,
            use_rslora: l.use_rslora,
            target_modules,
            train_embed_tokens: embed,
            train_lm_head: head,
        })
    }
}

/// The sections and their keys, from the struct itself (serialised defaults), for "did you mean".
fn sections() -> Vec<(String, Vec<String>)> {
    match toml::Value::try_from(TrainConfig::default()) {
        Ok(toml::Value::Table(t)) => t
            .into_iter()
            .map(|(section, v)| {
                let keys = match v {
                    toml::Value::Table(k) => k.keys().cloned().collect(),
                    _ => Vec::new(),
                };
                (section, keys)
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn section_keys(section: &str) -> Option<Vec<String>> {
    sections().into_iter().find(|(s, _)| s == section).map(|(_, k)| k)
}

fn section_names() -> Vec<String> {
    sections().into_iter().map(|(s, _)| s).collect()
}

fn unknown(what: &str, name: &str, known: &[String]) -> Error {
    let hint = match closest(name, known.iter()) {
        Some(c) => format!("did you mean `{c}`?"),
        None => format!("known: {}", known.join(", ")),
    };
    Error::hinted(format!("unknown {what} `{name}`"), hint)
}

/// Rejects unknown sections and keys (with the closest name), and turns a single string into a list where a
/// list is expected.
fn check_keys(table: &mut toml::Table) -> Result<()> {
    let names = section_names();
    for (section, value) in table.iter_mut() {
        let keys = section_keys(section).ok_or_else(|| unknown("section", &format!("[{section}]"), &names))?;
        let toml::Value::Table(t) = value else {
            return Err(Error::Invalid(format!("`{section}` must be a section ([{section}]), not a value")));
        };
        for (key, v) in t.iter_mut() {
            if !keys.contains(key) {
                return Err(unknown(&format!("key in [{section}]:"), key, &keys));
            }
            if LIST_KEYS.contains(&key.as_str()) {
                if let toml::Value::String(s) = v {
                    *v = toml::Value::Array(vec![toml::Value::String(std::mem::take(s))]);
                }
            }
        }
    }
    Ok(())
}

/// TOML text whose sections and keys are all known (single strings where lists go become lists of one).
fn parse_table(text: &str) -> Result<toml::Table> {
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        Error::Invalid(format!("not valid TOML: {}", e.to_string().lines().collect::<Vec<_>>().join(" ")))
    })?;
    check_keys(&mut table)?;
    Ok(table)
}

/// Each `--set section.key=value` into the table; an error names the override.
fn apply_overrides(table: &mut toml::Table, overrides: &[String]) -> Result<()> {
    for o in overrides {
        apply_override(table, o).map_err(|e| e.at(format!("--set {o}")))?;
    }
    check_keys(table)
}

/// `section.key=value` into the table.
fn apply_override(table: &mut toml::Table, o: &str) -> Result<()> {
    let (path, raw) = o
        .split_once('=')
        .ok_or_else(|| Error::hinted("expected section.key=value", "e.g. --set train.learning_rate=1e-4"))?;
    let (section, key) = path
        .trim()
        .split_once('.')
        .ok_or_else(|| Error::hinted("the key must name its section", "e.g. --set train.max_steps=100"))?;
    let keys = section_keys(section).ok_or_else(|| unknown("section", section, &section_names()))?;
    if !keys.iter().any(|k| k == key) {
        return Err(unknown(&format!("key in [{section}]:"), key, &keys));
    }
    let value = match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let entry = table.entry(section.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    match entry {
        toml::Value::Table(t) => {
            t.insert(key.to_string(), value);
            Ok(())
        }
        _ => Err(Error::Invalid(format!("`{section}` must be a section"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[model]\npath = \"m.gguf\"\n[data]\ntrain_files = \"a.jsonl\"\n";

    #[test]
    fn every_field_is_a_known_key() {
        let keys = section_keys("train").unwrap();
        assert!(keys.iter().any(|k| k == "per_device_train_batch_size") && keys.iter().any(|k| k == "report_to"));
        assert_eq!(section_names(), ["data", "lora", "model", "train"]);
    }

    #[test]
    fn minimal_config_and_overrides() {
        let c = TrainConfig::parse(MINIMAL, &[]).unwrap();
        assert_eq!(c.data.train_files, vec!["a.jsonl"]);
        assert_eq!(c.train.learning_rate, 2e-4);
        let c = TrainConfig::parse(
            MINIMAL,
            &[
                "train.learning_rate=1e-4".into(),
                "train.report_to=tensorboard".into(),
                "lora.target_modules=[\"q_proj\", \"embed_tokens\"]".into(),
                "train.output_dir=runs/x".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.train.learning_rate, 1e-4);
        let run = c.resolve().unwrap();
        assert!(run.tensorboard);
        assert_eq!(run.output_dir, PathBuf::from("runs/x"));
        assert_eq!(run.lora.target_modules, vec![TargetModule::QProj]);
        assert!(run.lora.train_embed_tokens && !run.lora.train_lm_head);
        assert_eq!(run.length, TrainLength::Epochs(1.0));
        assert_eq!(run.embedding_learning_rate, 1e-4);
        // Round trip through the TOML a checkpoint stores.
        assert_eq!(TrainConfig::parse(&run.toml, &[]).unwrap(), c);
    }

    #[test]
    fn unknown_keys_suggest_the_closest() {
        let e = TrainConfig::parse(&format!("{MINIMAL}[train]\nlearnig_rate = 1.0\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("learnig_rate"), "{e}");
        assert_eq!(e.hint(), Some("did you mean `learning_rate`?"));
        let e = TrainConfig::parse(MINIMAL, &["trian.seed=1".into()]).unwrap_err();
        assert_eq!(e.hint(), Some("did you mean `train`?"));
        let e = TrainConfig::parse(&format!("{MINIMAL}[lora]\nr = \"x\"\n"), &[]).unwrap_err();
        assert!(e.to_string().contains('r'), "{e}");
        let e = TrainConfig::parse(&format!("{MINIMAL}[train]\noptim = \"sgd\"\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("sgd"), "{e}");
        let e = TrainConfig::parse(MINIMAL, &["lora.target_modules=[\"q\"]".into()]).unwrap_err();
        assert!(e.to_string().contains("'q'"), "{e}");
    }
}
