//! Value parsers the benchmarks' command lines share (they parse with clap's derive).

use crate::Durability;

/// A count of at least 1 (`--rounds 0` is refused with a message naming the option).
pub fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

/// PostgreSQL's durability: `on` or `off`.
pub fn durability(text: &str) -> Result<Durability, String> {
    match text {
        "on" => Ok(Durability::On),
        "off" => Ok(Durability::Off),
        _ => Err("expected on or off".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_is_on_or_off() {
        assert_eq!(durability("on"), Ok(Durability::On));
        assert_eq!(durability("off"), Ok(Durability::Off));
        assert!(durability("yes").is_err());
    }
}
