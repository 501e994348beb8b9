//! Resource quantities (`100m`, `1.5`, `128Mi`, `1e3`) as numbers.

/// A quantity in thousandths of its unit (CPU in millicores), rounded up;
/// `None` if it does not parse.
pub fn milli(text: &str) -> Option<i64> {
    scaled(text, 1000.0)
}

/// A quantity in its unit (memory in bytes), rounded up.
pub fn value(text: &str) -> Option<i64> {
    scaled(text, 1.0)
}

fn scaled(text: &str, factor: f64) -> Option<i64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent if exponent.starts_with(['e', 'E']) => {
            10f64.powi(exponent[1..].parse::<i32>().ok()?)
        }
        _ => return None,
    };
    let scaled = (number * multiplier * factor).ceil();
    (scaled.is_finite() && scaled.abs() < 9.2e18).then_some(scaled as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_as_kubernetes_writes_them() {
        assert_eq!(milli("100m"), Some(100));
        assert_eq!(milli("1.5"), Some(1500));
        assert_eq!(milli("2"), Some(2000));
        assert_eq!(value("128Mi"), Some(128 * 1024 * 1024));
        assert_eq!(value("1G"), Some(1_000_000_000));
        assert_eq!(value("1e3"), Some(1000));
        assert_eq!(value("110"), Some(110));
        assert_eq!(value("12x"), None);
        assert_eq!(value(""), None);
    }
}
