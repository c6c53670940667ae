//! The names a server answers to: the base model and its adapters, each held once, unmerged, and shared by every
//! request that names it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use crate::error::{Error, Result};
use crate::lora::peft::load_peft_adapter;
use crate::model::{Llama, UnmergedAdapter};

/// One served adapter: where it was read from, and its tensors.
pub struct ServedAdapter {
    pub dir: PathBuf,
    pub adapter: Arc<UnmergedAdapter>,
}

pub struct Models {
    base: String,
    adapters: RwLock<BTreeMap<String, ServedAdapter>>,
}

/// What a request's `model` resolves to.
pub enum Target {
    Base,
    Adapter(Arc<UnmergedAdapter>),
}

/// A name fit for `model` and a URL: letters, digits and `._-:`, at most 64 of them.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
    if ok {
        Ok(())
    } else {
        Err(Error::hinted(
            format!("'{name}' is not a model name"),
            "use up to 64 letters, digits and . _ - : (e.g. ift or cpt-ift)",
        ))
    }
}

impl Models {
    pub fn new(base: &str) -> Result<Self> {
        check_name(base)?;
        Ok(Models { base: base.to_string(), adapters: RwLock::new(BTreeMap::new()) })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Reads the PEFT adapter in `dir`, checked against `model`, and serves it as `name`.
    pub fn load(&self, name: &str, dir: &Path, model: &Llama) -> Result<()> {
        check_name(name)?;
        if name == self.base || self.adapters.read().unwrap_or_else(PoisonError::into_inner).contains_key(name) {
            return Err(Error::hinted(
                format!("the name '{name}' is already served"),
                "give each adapter its own name",
            ));
        }
        let adapter = load_peft_adapter(dir, model)?.into_unmerged(&model.config).map_err(|e| e.at(dir.display()))?;
        let served = ServedAdapter { dir: dir.to_path_buf(), adapter: Arc::new(adapter) };
        let mut adapters = self.adapters.write().unwrap_or_else(PoisonError::into_inner);
        if adapters.contains_key(name) {
            return Err(Error::hinted(
                format!("the name '{name}' is already served"),
                "give each adapter its own name",
            ));
        }
        adapters.insert(name.to_string(), served);
        Ok(())
    }

    /// Stops serving adapter `name`; requests already running with it finish. False when no adapter has it.
    pub fn remove(&self, name: &str) -> bool {
        self.adapters.write().unwrap_or_else(PoisonError::into_inner).remove(name).is_some()
    }

    pub fn get(&self, name: &str) -> Option<Target> {
        if name == self.base {
            return Some(Target::Base);
        }
        let adapters = self.adapters.read().unwrap_or_else(PoisonError::into_inner);
        adapters.get(name).map(|s| Target::Adapter(s.adapter.clone()))
    }

    /// Every name served, the base first, then the adapters in name order.
    pub fn names(&self) -> Vec<String> {
        let adapters = self.adapters.read().unwrap_or_else(PoisonError::into_inner);
        std::iter::once(self.base.clone()).chain(adapters.keys().cloned()).collect()
    }

    /// (name, folder) of every adapter.
    pub fn adapter_dirs(&self) -> Vec<(String, PathBuf)> {
        let adapters = self.adapters.read().unwrap_or_else(PoisonError::into_inner);
        adapters.iter().map(|(n, s)| (n.clone(), s.dir.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("cpt-ift_2.v1:latest").is_ok());
        for bad in ["", "a/b", "../x", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        let m = Models::new("base").unwrap();
        assert!(matches!(m.get("base"), Some(Target::Base)));
        assert!(m.get("other").is_none());
        assert_eq!(m.names(), vec!["base".to_string()]);
    }
}
