//! Values chosen by name from a fixed set (a cell, a schedule, a precision, a preset): one table
//! per type gives each value's name, as settings files and the command line spell it, and a
//! line saying what it is, so every front end parses and lists them the same way.

/// A type whose values are chosen by name.
pub trait Choice: Copy + PartialEq + Sized + 'static {
    /// Every value with its name and a one-line description, in the order listings show them.
    const ALL: &'static [(Self, &'static str, &'static str)];

    /// The value's name.
    fn name(self) -> &'static str {
        Self::ALL.iter().find(|(v, _, _)| *v == self).map_or("?", |(_, name, _)| name)
    }

    /// The value of this name; the error lists the names there are.
    fn parse(name: &str) -> Result<Self, UnknownChoice> {
        match Self::ALL.iter().find(|(_, n, _)| *n == name) {
            Some((v, _, _)) => Ok(*v),
            None => Err(UnknownChoice {
                given: name.to_string(),
                expected: Self::ALL.iter().map(|(_, n, _)| *n).collect(),
            }),
        }
    }
}

/// A name that is none of a [`Choice`]'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownChoice {
    /// The name given.
    pub given: String,
    /// The names there are.
    pub expected: Vec<&'static str>,
}

impl std::fmt::Display for UnknownChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown value {:?}: expected one of {}", self.given, self.expected.join(", "))
    }
}

impl std::error::Error for UnknownChoice {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::Precision;
    use crate::ops::cells::Cell;
    use crate::train::presets::Preset;
    use crate::train::settings::LrSchedule;

    /// Each table's names are the values' saved (serde) names, and parse back to the value.
    fn names_are_the_saved_names<T: Choice + serde::Serialize + std::fmt::Debug>() {
        for (value, name, help) in T::ALL {
            assert_eq!(serde_json::to_value(value).unwrap(), serde_json::json!(name), "{value:?}");
            assert_eq!(T::parse(name).unwrap(), *value);
            assert_eq!(value.name(), *name);
            assert!(!help.is_empty());
        }
        let e = T::parse("nonsense").unwrap_err().to_string();
        assert!(e.contains("nonsense") && e.contains(T::ALL[0].1), "{e}");
    }

    #[test]
    fn every_choice_table_spells_the_saved_names() {
        names_are_the_saved_names::<Cell>();
        names_are_the_saved_names::<Precision>();
        names_are_the_saved_names::<LrSchedule>();
        names_are_the_saved_names::<Preset>();
    }
}
