//! Kubernetes resource quantities (`1Gi`, `1073741824`, `2G`) as byte counts.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The number of bytes a storage quantity stands for, or `None` for a form storage sizes do not
/// use (fractions, milli-units, exponents).
pub fn bytes(quantity: &Quantity) -> Option<u64> {
    let text = quantity.0.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let number: u64 = digits.parse().ok()?;
    let factor: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        _ => return None,
    };
    number.checked_mul(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &str) -> Option<u64> {
        bytes(&Quantity(text.to_string()))
    }

    #[test]
    fn binary_decimal_and_plain_forms() {
        assert_eq!(q("1Gi"), Some(1 << 30));
        assert_eq!(q("2147483648"), Some(2 << 30));
        assert_eq!(q("5M"), Some(5_000_000));
        assert_eq!(q("1500m"), None);
        assert_eq!(q("1.5Gi"), None);
        assert_eq!(q("Gi"), None);
    }
}
