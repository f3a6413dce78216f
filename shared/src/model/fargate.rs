//! Fargate task sizes: the valid vCPU/memory pairs, validation of stated sizes and snapping of derived ones.
//!
//! Fargate accepts only these combinations (memory in MiB):
//!
//! | vCPU | memory |
//! |---|---|
//! | 0.25 | 512, 1024, 2048 |
//! | 0.5 | 1024 to 4096, by 1024 |
//! | 1 | 2048 to 8192, by 1024 |
//! | 2 | 4096 to 16384, by 1024 |
//! | 4 | 8192 to 30720, by 1024 |
//! | 8 | 16384 to 61440, by 4096 |
//! | 16 | 32768 to 122880, by 8192 |
//!
//! vCPU is kept in quarter units (`1` = 0.25 vCPU) so sizes compare exactly.

use std::fmt;

/// A vCPU count in quarters of a vCPU: 0.25 vCPU is `Quarters(1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quarters(pub u32);

/// A Fargate task size. In JSON: `{"vcpu": "0.25", "memoryMib": 512}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "SizeJson", into = "SizeJson")]
pub struct Size {
    pub vcpu: Quarters,
    pub memory_mib: u32,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SizeJson {
    vcpu: String,
    memory_mib: u32,
}

impl From<Size> for SizeJson {
    fn from(size: Size) -> Self {
        SizeJson { vcpu: format_vcpu(size.vcpu), memory_mib: size.memory_mib }
    }
}

impl TryFrom<SizeJson> for Size {
    type Error = SizeError;
    fn try_from(json: SizeJson) -> Result<Self, SizeError> {
        Ok(Size { vcpu: parse_vcpu(&json.vcpu)?, memory_mib: json.memory_mib })
    }
}

/// (vCPU in quarters, first memory, last memory, step) for each vCPU value.
const TABLE: [(u32, u32, u32, u32); 7] = [
    (1, 512, 2048, 0), // 512, 1024, 2048: listed in `memory_choices`
    (2, 1024, 4096, 1024),
    (4, 2048, 8192, 1024),
    (8, 4096, 16384, 1024),
    (16, 8192, 30720, 1024),
    (32, 16384, 61440, 4096),
    (64, 32768, 122880, 8192),
];

fn memory_choices(vcpu_quarters: u32, first: u32, last: u32, step: u32) -> Vec<u32> {
    if vcpu_quarters == 1 {
        return vec![512, 1024, 2048];
    }
    (first..=last).step_by(step as usize).collect()
}

/// Every valid size, smallest vCPU first, then smallest memory.
pub fn valid_sizes() -> Vec<Size> {
    TABLE
        .iter()
        .flat_map(|&(vcpu, first, last, step)| {
            memory_choices(vcpu, first, last, step)
                .into_iter()
                .map(move |memory_mib| Size { vcpu: Quarters(vcpu), memory_mib })
        })
        .collect()
}

/// The valid pairs in words, for error messages.
pub fn valid_sizes_description() -> String {
    TABLE
        .iter()
        .map(|&(vcpu, first, last, step)| {
            let vcpu = format_vcpu(Quarters(vcpu));
            if step == 0 {
                format!("{vcpu} vCPU: 512, 1024 or 2048 MiB")
            } else {
                format!("{vcpu} vCPU: {first}-{last} MiB in steps of {step}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("vCPU {0:?} is not a number Fargate accepts (0.25, 0.5, 1, 2, 4, 8 or 16)")]
    BadVcpu(String),
    #[error("memory {0:?} is not a whole number of MiB")]
    BadMemory(String),
    #[error(
        "{vcpu} vCPU with {memory_mib} MiB is not a valid Fargate size; valid sizes are {}",
        valid_sizes_description()
    )]
    InvalidPair { vcpu: String, memory_mib: u32 },
    #[error("no Fargate size has {vcpu} vCPU and {memory_mib} MiB or more (the largest is 16 vCPU, 122880 MiB)")]
    TooLarge { vcpu: String, memory_mib: u32 },
}

/// Parses a vCPU value as Batch carries it (`"0.25"`, `"1"`, `"2.0"`).
pub fn parse_vcpu(text: &str) -> Result<Quarters, SizeError> {
    let bad = || SizeError::BadVcpu(text.to_owned());
    let value: f64 = text.trim().parse().map_err(|_| bad())?;
    let quarters = value * 4.0;
    if !quarters.is_finite() || quarters <= 0.0 || quarters.fract() != 0.0 || quarters > 64.0 {
        return Err(bad());
    }
    Ok(Quarters(quarters as u32))
}

/// Parses memory in MiB (`"2048"`).
pub fn parse_memory(text: &str) -> Result<u32, SizeError> {
    text.trim().parse().map_err(|_| SizeError::BadMemory(text.to_owned()))
}

/// `0.25`, `0.5`, `1`, `16`: vCPU as Batch's `resourceRequirements` write it.
pub fn format_vcpu(vcpu: Quarters) -> String {
    match vcpu.0 % 4 {
        0 => (vcpu.0 / 4).to_string(),
        2 => format!("{}.5", vcpu.0 / 4),
        _ => format!("{}", vcpu.0 as f64 / 4.0),
    }
}

impl Size {
    /// vCPU as a number (for cost).
    pub fn vcpu_f64(&self) -> f64 {
        self.vcpu.0 as f64 / 4.0
    }

    /// A size the caller stated: it must be one of the valid pairs.
    pub fn exact(vcpu: Quarters, memory_mib: u32) -> Result<Size, SizeError> {
        let size = Size { vcpu, memory_mib };
        if valid_sizes().contains(&size) {
            Ok(size)
        } else {
            Err(SizeError::InvalidPair { vcpu: format_vcpu(vcpu), memory_mib })
        }
    }

    /// A size stated as text (a declaration, an API request): each of vCPU and memory
    /// defaults to `default`'s, and the pair must be valid. Every problem is returned.
    pub fn parse_stated(vcpu: Option<&str>, memory: Option<&str>, default: Size) -> Result<Size, Vec<SizeError>> {
        let vcpu = vcpu.map(parse_vcpu).transpose();
        let memory = memory.map(parse_memory).transpose();
        match (vcpu, memory) {
            (Ok(vcpu), Ok(memory)) => {
                Size::exact(vcpu.unwrap_or(default.vcpu), memory.unwrap_or(default.memory_mib)).map_err(|e| vec![e])
            }
            (vcpu, memory) => Err([vcpu.err(), memory.err()].into_iter().flatten().collect()),
        }
    }

    /// A size an API caller asked for: both halves given must be a valid pair (the error
    /// lists the valid ones); one half alone keeps the other from `default` and snaps up
    /// to the smallest valid size with at least both, as sizes derived from S3 objects do.
    /// Returns the size and whether it differs from what was asked.
    pub fn parse_requested(
        vcpu: Option<&str>,
        memory: Option<&str>,
        default: Size,
    ) -> Result<(Size, bool), Vec<SizeError>> {
        if vcpu.is_some() && memory.is_some() {
            return Size::parse_stated(vcpu, memory, default).map(|size| (size, false));
        }
        let parsed_vcpu = vcpu.map(parse_vcpu).transpose();
        let parsed_memory = memory.map(parse_memory).transpose();
        match (parsed_vcpu, parsed_memory) {
            (Ok(v), Ok(m)) => {
                let (vcpu, memory_mib) = (v.unwrap_or(default.vcpu), m.unwrap_or(default.memory_mib));
                let size = Size::snap(vcpu, memory_mib).map_err(|e| vec![e])?;
                Ok((size, size != Size { vcpu, memory_mib }))
            }
            (v, m) => Err([v.err(), m.err()].into_iter().flatten().collect()),
        }
    }

    /// The smallest valid size with at least this vCPU and memory (for sizes derived from
    /// a rule or an escalation, which may fall between the valid pairs).
    pub fn snap(vcpu: Quarters, memory_mib: u32) -> Result<Size, SizeError> {
        valid_sizes()
            .into_iter()
            .filter(|s| s.vcpu >= vcpu && s.memory_mib >= memory_mib)
            .min_by_key(|s| (s.vcpu, s.memory_mib))
            .ok_or(SizeError::TooLarge { vcpu: format_vcpu(vcpu), memory_mib })
    }

    /// Whether a job of this size can run where at most `max_vcpus` whole vCPUs are given
    /// (a compute environment's `MaxVcpus`).
    pub fn fits_vcpus(&self, max_vcpus: u32) -> bool {
        self.vcpu.0 <= max_vcpus * 4
    }

    /// The next larger size after running out of memory: more memory at the same vCPU
    /// when there is a larger valid memory (doubling, snapped up), else the next vCPU.
    pub fn next_for_memory(&self) -> Option<Size> {
        let wanted = self.memory_mib.saturating_mul(2);
        Size::snap(self.vcpu, wanted).ok().or_else(|| Size::snap(self.vcpu, self.memory_mib + 1).ok())
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} vCPU / {} MiB", format_vcpu(self.vcpu), self.memory_mib)
    }
}

/// At least `factor` times the object's size in memory, and never less than the job
/// definition's size: snapped up to the smallest valid Fargate size.
pub fn sized_for_object(base: Size, factor: u32, object_bytes: u64) -> Result<Size, String> {
    let needed_mib = (object_bytes.saturating_mul(factor as u64)).div_ceil(1024 * 1024);
    let memory = base.memory_mib.max(u32::try_from(needed_mib).unwrap_or(u32::MAX));
    Size::snap(base.vcpu, memory)
        .map_err(|e| format!("an object of {object_bytes} bytes needs more memory than Fargate has: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(vcpu: &str, memory: u32) -> Size {
        Size { vcpu: parse_vcpu(vcpu).unwrap(), memory_mib: memory }
    }

    #[test]
    fn a_requested_half_size_keeps_the_other_half_and_snaps_up() {
        let default = size("0.25", 512);
        assert_eq!(Size::parse_requested(None, Some("3000"), default), Ok((size("0.5", 3072), true)));
        assert_eq!(Size::parse_requested(Some("2"), None, default), Ok((size("2", 4096), true)));
        assert_eq!(Size::parse_requested(None, Some("1024"), default), Ok((size("0.25", 1024), false)));
        assert!(Size::parse_requested(Some("3"), Some("512"), default).is_err(), "both given: exact");
        assert!(Size::parse_requested(None, Some("lots"), default).is_err());
        assert!(Size::parse_requested(None, Some("999999"), default).is_err(), "beyond the largest size");
    }

    #[test]
    fn the_valid_pairs_are_fargates() {
        let sizes = valid_sizes();
        assert!(sizes.contains(&size("0.25", 512)));
        assert!(sizes.contains(&size("0.25", 2048)));
        assert!(!sizes.contains(&size("0.25", 1536)));
        assert!(sizes.contains(&size("0.5", 3072)));
        assert!(sizes.contains(&size("4", 30720)));
        assert!(!sizes.contains(&size("4", 31744)));
        assert!(sizes.contains(&size("8", 20480)));
        assert!(!sizes.contains(&size("8", 17408)));
        assert!(sizes.contains(&size("16", 122880)));
        assert!(!sizes.contains(&size("16", 36864)));
        // 3 + 4 + 7 + 13 + 23 + 12 + 12
        assert_eq!(sizes.len(), 74);
    }

    #[test]
    fn stated_sizes_must_be_valid_and_the_error_lists_the_valid_ones() {
        assert_eq!(Size::exact(Quarters(1), 512), Ok(size("0.25", 512)));
        let err = Size::exact(Quarters(4), 1024).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("1 vCPU with 1024 MiB"), "{message}");
        assert!(message.contains("1 vCPU: 2048-8192 MiB in steps of 1024"), "{message}");
        assert!(message.contains("0.25 vCPU: 512, 1024 or 2048 MiB"), "{message}");
    }

    #[test]
    fn derived_sizes_snap_up_to_the_smallest_valid_pair() {
        assert_eq!(Size::snap(Quarters(1), 600), Ok(size("0.25", 1024)));
        assert_eq!(Size::snap(Quarters(1), 3000), Ok(size("0.5", 3072)));
        assert_eq!(Size::snap(Quarters(3), 100), Ok(size("1", 2048)));
        assert_eq!(Size::snap(Quarters(32), 61441), Ok(size("16", 65536)));
        assert!(matches!(Size::snap(Quarters(64), 200_000), Err(SizeError::TooLarge { .. })));
    }

    #[test]
    fn out_of_memory_escalation_doubles_memory_then_moves_up_a_vcpu_step() {
        assert_eq!(size("0.25", 512).next_for_memory(), Some(size("0.25", 1024)));
        assert_eq!(size("0.25", 2048).next_for_memory(), Some(size("0.5", 4096)));
        assert_eq!(size("1", 8192).next_for_memory(), Some(size("2", 16384)));
        assert_eq!(size("16", 122880).next_for_memory(), None);
    }

    #[test]
    fn vcpu_text_round_trips() {
        for text in ["0.25", "0.5", "1", "2", "4", "8", "16"] {
            assert_eq!(format_vcpu(parse_vcpu(text).unwrap()), text);
        }
        assert_eq!(parse_vcpu("2.0"), Ok(Quarters(8)));
        for bad in ["0", "-1", "0.3", "abc", "32", "NaN"] {
            assert!(parse_vcpu(bad).is_err(), "{bad}");
        }
    }
}
