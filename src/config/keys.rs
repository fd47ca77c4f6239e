//! Every key a configuration file may hold, read off the serde structs the file is parsed into,
//! so a key added there is listed here without anyone writing it down twice.
//!
//! ```text
//!  RawConfig::deserialize(Walker) ─► each struct asks for its fields ─► the walker hands it each
//!  field in turn, with a placeholder value (0, "", false, the first variant, one element) ─►
//!  every table and key it asked for, by path
//! ```
//!
//! A table is named as TOML writes its header (`[relay]`, `[[service.server]]`): its presence is a
//! setting of its own. A key is named by its dotted path (`service.server.port`).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;

use serde::de::value::BorrowedStrDeserializer;
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, MapAccess, SeqAccess, VariantAccess, Visitor,
};
use serde::Deserialize;

use super::raw::RawConfig;

/// The name `toml::Spanned` gives its struct: a wrapper around one value, not a table.
const SPANNED: &str = "$__serde_spanned_private_Spanned";
/// The field of `toml::Spanned` that holds the wrapped value.
const SPANNED_VALUE: &str = "$__serde_spanned_private_value";

/// Every table (`[name]`, `[[name]]`) and key (`section.key`) of the configuration file, sorted.
pub fn all() -> Result<BTreeSet<String>, WalkError> {
    let found = RefCell::new(BTreeSet::new());
    RawConfig::deserialize(Walker { path: String::new(), in_array: false, found: &found })?;
    Ok(found.into_inner())
}

/// A type in the configuration's structs that the walk cannot read (a new kind of value: teach
/// the walker to walk it).
#[derive(Debug, thiserror::Error)]
#[error("walking the configuration's keys: {0}")]
pub struct WalkError(String);

impl de::Error for WalkError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        WalkError(msg.to_string())
    }
}

/// A deserializer that hands every struct each of its fields with a placeholder value, noting
/// the path of every table and key it is asked for.
struct Walker<'a> {
    /// The dotted path of the value being read (empty: the file).
    path: String,
    /// Whether the value is an element of an array (a table there is `[[path]]`).
    in_array: bool,
    found: &'a RefCell<BTreeSet<String>>,
}

impl<'a> Walker<'a> {
    fn key(&self) {
        if !self.path.is_empty() {
            self.found.borrow_mut().insert(self.path.clone());
        }
    }

    fn field(&self, name: &str) -> Walker<'a> {
        let path = if self.path.is_empty() { name.to_string() } else { format!("{}.{name}", self.path) };
        Walker { path, in_array: false, found: self.found }
    }

    fn same(&self, in_array: bool) -> Walker<'a> {
        Walker { path: self.path.clone(), in_array, found: self.found }
    }
}

/// Forwards the scalar kinds to one placeholder each, noting the key.
macro_rules! scalar {
    ($($method:ident => $visit:ident($($value:expr)?)),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, WalkError> {
            self.key();
            visitor.$visit($($value)?)
        }
    )*};
}

impl<'de> Deserializer<'de> for Walker<'_> {
    type Error = WalkError;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, WalkError> {
        Err(WalkError(format!("`{}` has a type the walk does not know", self.path)))
    }

    scalar! {
        deserialize_bool => visit_bool(false),
        deserialize_i8 => visit_i8(0), deserialize_i16 => visit_i16(0), deserialize_i32 => visit_i32(0),
        deserialize_i64 => visit_i64(0), deserialize_u8 => visit_u8(0), deserialize_u16 => visit_u16(0),
        deserialize_u32 => visit_u32(0), deserialize_u64 => visit_u64(0), deserialize_f32 => visit_f32(0.0),
        deserialize_f64 => visit_f64(0.0), deserialize_char => visit_char('x'),
        deserialize_str => visit_borrowed_str(""), deserialize_string => visit_borrowed_str(""),
        deserialize_bytes => visit_borrowed_bytes(b""), deserialize_byte_buf => visit_borrowed_bytes(b""),
        deserialize_unit => visit_unit(), deserialize_identifier => visit_borrowed_str(""),
        deserialize_ignored_any => visit_unit(),
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, WalkError> {
        visitor.visit_some(self)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, WalkError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, v: V) -> Result<V::Value, WalkError> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, WalkError> {
        visitor.visit_seq(One(Some(self.same(true))))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, WalkError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, WalkError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, WalkError> {
        Err(WalkError(format!("`{}` is a map with keys of its own choosing", self.path)))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, WalkError> {
        if name == SPANNED {
            // A value with its place in the file: the value is the key, not a table.
            return visitor.visit_map(Fields { fields: &[SPANNED_VALUE, "start", "end"], next: 0, walker: self });
        }
        if !self.path.is_empty() {
            let table = if self.in_array { format!("[[{}]]", self.path) } else { format!("[{}]", self.path) };
            self.found.borrow_mut().insert(table);
        }
        visitor.visit_map(Fields { fields, next: 0, walker: self })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, WalkError> {
        self.key();
        let first =
            variants.first().copied().ok_or_else(|| WalkError(format!("`{}`: an enum without variants", self.path)))?;
        visitor.visit_enum(Variant(first))
    }
}

/// A struct's fields, each with a walker for its value.
struct Fields<'a> {
    fields: &'static [&'static str],
    next: usize,
    walker: Walker<'a>,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = WalkError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, WalkError> {
        let Some(&name) = self.fields.get(self.next) else { return Ok(None) };
        let name = match name {
            // toml::Spanned's position fields, spelt as it matches them.
            "start" if self.fields[0] == SPANNED_VALUE => "$__serde_spanned_private_start",
            "end" if self.fields[0] == SPANNED_VALUE => "$__serde_spanned_private_end",
            other => other,
        };
        seed.deserialize(BorrowedStrDeserializer::new(name)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, WalkError> {
        let name = self.fields.get(self.next).copied().unwrap_or_default();
        self.next += 1;
        match name {
            SPANNED_VALUE => seed.deserialize(self.walker.same(self.walker.in_array)),
            "start" | "end" if self.fields[0] == SPANNED_VALUE => seed.deserialize(0usize.into_deserializer()),
            field => seed.deserialize(self.walker.field(field)),
        }
    }
}

/// An array of one element.
struct One<'a>(Option<Walker<'a>>);

impl<'de> SeqAccess<'de> for One<'_> {
    type Error = WalkError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, WalkError> {
        self.0.take().map(|w| seed.deserialize(w)).transpose()
    }
}

/// The first variant of a unit enum (`policy = "round-robin"`).
struct Variant(&'static str);

impl<'de> EnumAccess<'de> for Variant {
    type Error = WalkError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), WalkError> {
        Ok((seed.deserialize(BorrowedStrDeserializer::new(self.0))?, self))
    }
}

impl<'de> VariantAccess<'de> for Variant {
    type Error = WalkError;

    fn unit_variant(self) -> Result<(), WalkError> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _: T) -> Result<T::Value, WalkError> {
        Err(WalkError(format!("variant `{}` carries a value", self.0)))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, WalkError> {
        Err(WalkError(format!("variant `{}` carries values", self.0)))
    }

    fn struct_variant<V: Visitor<'de>>(self, _: &'static [&'static str], _: V) -> Result<V::Value, WalkError> {
        Err(WalkError(format!("variant `{}` carries fields", self.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_finds_tables_keys_and_nested_arrays() {
        let keys = all().unwrap();
        for want in [
            "[server]",
            "server.listen",
            "server.user",
            "[[service]]",
            "[[service.server]]",
            "service.server.tls_port",
            "[relay]",
            "[[relay.route]]",
            "relay.route.domain",
            "[metrics]",
            "metrics.listen",
            "probe.down_codes",
            "[[sites]]",
        ] {
            assert!(keys.contains(want), "{want} missing from {keys:?}");
        }
        assert!(!keys.iter().any(|k| k.contains("$__")), "{keys:?}");
    }
}
