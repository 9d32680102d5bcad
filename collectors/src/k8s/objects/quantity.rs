//! Kubernetes resource quantities (`resource.Quantity`), as far as KubeVirt's metrics use them:
//! `Value()` (rounded up to an integer), `ScaledValue(Milli)` and `IsZero()`.
//!
//! A quantity is kept as `mantissa × 10^exp10 × 2^exp2`, exactly as written, so the rounding
//! matches Go's (`1.5Gi` and `100m` are exact; only absurd magnitudes fall back to floats).

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    mantissa: i128,
    exp10: i32,
    exp2: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantity {0:?}")]
pub struct QuantityError(pub String);

impl Quantity {
    pub const ZERO: Quantity = Quantity {
        mantissa: 0,
        exp10: 0,
        exp2: 0,
    };

    pub fn from_integer(value: i64) -> Self {
        Self {
            mantissa: i128::from(value),
            exp10: 0,
            exp2: 0,
        }
    }

    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        parse(text.trim()).ok_or_else(|| QuantityError(text.to_owned()))
    }

    pub fn is_zero(&self) -> bool {
        self.mantissa == 0
    }

    /// Go's `Quantity.Value()`: the value rounded up (away from zero for positives) to an integer.
    pub fn value(&self) -> i64 {
        self.scaled_ceil(0)
    }

    /// Go's `Quantity.ScaledValue(resource.Milli)`.
    pub fn milli_value(&self) -> i64 {
        self.scaled_ceil(3)
    }

    /// `ceil(self × 10^scale)`, saturating like Go does for out-of-range values.
    fn scaled_ceil(&self, scale: i32) -> i64 {
        self.exact_scaled_ceil(scale)
            .unwrap_or_else(|| saturate(self.as_f64() * 10f64.powi(scale)))
    }

    fn exact_scaled_ceil(&self, scale: i32) -> Option<i64> {
        let binary = 1i128.checked_shl(self.exp2)?;
        let mut numerator = self.mantissa.checked_mul(binary)?;
        let exp = self.exp10.checked_add(scale)?;
        let mut denominator: i128 = 1;
        if exp >= 0 {
            numerator = numerator.checked_mul(10i128.checked_pow(u32::try_from(exp).ok()?)?)?;
        } else {
            denominator = 10i128.checked_pow(u32::try_from(-exp).ok()?)?;
        }
        let quotient = numerator.div_euclid(denominator);
        let ceil = if numerator.rem_euclid(denominator) == 0 {
            quotient
        } else {
            quotient + 1
        };
        i64::try_from(ceil).ok()
    }

    pub fn as_f64(&self) -> f64 {
        // Lossy on purpose: only used when the exact path overflows.
        #[allow(clippy::cast_precision_loss)]
        let mantissa = self.mantissa as f64;
        mantissa * 10f64.powi(self.exp10) * 2f64.powi(i32::try_from(self.exp2).unwrap_or(0))
    }
}

fn saturate(value: f64) -> i64 {
    if value.is_nan() {
        0
    } else {
        // `as` saturates for floats out of range, which is what we want here.
        #[allow(clippy::cast_possible_truncation)]
        let v = value.ceil() as i64;
        v
    }
}

fn parse(text: &str) -> Option<Quantity> {
    let (negative, rest) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let number_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return None;
    }
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let mut mantissa: i128 = 0;
    for digit in whole.bytes().chain(fraction.bytes()) {
        mantissa = mantissa
            .checked_mul(10)?
            .checked_add(i128::from(digit - b'0'))?;
    }
    let mut exp10 = -i32::try_from(fraction.len()).ok()?;
    let mut exp2 = 0;
    match suffix {
        "" => {}
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        s if s.starts_with(['e', 'E']) => {
            let exponent: i32 = s[1..].parse().ok()?;
            exp10 = exp10.checked_add(exponent)?;
        }
        _ => return None,
    }
    Some(Quantity {
        mantissa: if negative { -mantissa } else { mantissa },
        exp10,
        exp2,
    })
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct QuantityVisitor;

        impl Visitor<'_> for QuantityVisitor {
            type Value = Quantity;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Kubernetes quantity")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
                Quantity::parse(v).map_err(E::custom)
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
                Ok(Quantity::from_integer(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
                i64::try_from(v)
                    .map(Quantity::from_integer)
                    .map_err(|_| E::custom("quantity out of range"))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Quantity, E> {
                Quantity::parse(&v.to_string()).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(QuantityVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &str) -> Quantity {
        Quantity::parse(text).expect("valid quantity")
    }

    #[test]
    fn values_round_up_like_go() {
        assert_eq!(q("1Gi").value(), 1 << 30);
        assert_eq!(q("1.5Gi").value(), 3 << 29);
        assert_eq!(q("2Mi").value(), 2 << 20);
        assert_eq!(q("128M").value(), 128_000_000);
        assert_eq!(q("100m").value(), 1);
        assert_eq!(q("100m").milli_value(), 100);
        assert_eq!(q("2").milli_value(), 2000);
        assert_eq!(q("1.5").milli_value(), 1500);
        assert_eq!(q("1e3").value(), 1000);
        assert_eq!(q("0.1").value(), 1);
        assert_eq!(q("-1.5").value(), -1);
        assert!(q("0").is_zero());
        assert!(q("0Gi").is_zero());
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "Gi", "1.2.3", "1Gb", "abc", "1 Gi"] {
            assert!(Quantity::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn deserializes_strings_and_numbers() {
        let v: Vec<Quantity> = serde_json::from_str(r#"["1Gi", 2, 0.5]"#).expect("json");
        assert_eq!(v[0].value(), 1 << 30);
        assert_eq!(v[1].value(), 2);
        assert_eq!(v[2].milli_value(), 500);
    }
}
