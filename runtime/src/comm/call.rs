//! What a rank says it is calling, so that ranks which called different collectives (or
//! passed different shapes or types) fail with an error naming them instead of mixing
//! their data. Shared by every backend.

use super::reduce::Op;

/// Kinds of collective, for checking that every rank called the same one.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u64)]
pub enum Kind {
    Barrier = 1,
    AllReduce,
    Reduce,
    Broadcast,
    BroadcastSlice,
    AllGather,
    Gather,
    Scatter,
    // Not collectives, but they can break the group too.
    Send,
    Recv,
    /// What `ranch::map` agrees on before it hands out items (see `host_share`).
    Map,
}

pub const KINDS: [(Kind, &str); 11] = [
    (Kind::Barrier, "barrier"),
    (Kind::AllReduce, "all_reduce"),
    (Kind::Reduce, "reduce"),
    (Kind::Broadcast, "broadcast"),
    (Kind::BroadcastSlice, "broadcast_slice"),
    (Kind::AllGather, "all_gather"),
    (Kind::Gather, "gather"),
    (Kind::Scatter, "scatter"),
    (Kind::Send, "send"),
    (Kind::Recv, "recv"),
    (Kind::Map, "map"),
];

pub fn kind_of(op: &str) -> Kind {
    KINDS.iter().find(|(_, n)| *n == op).map(|(k, _)| *k).expect("known collective")
}

/// What a rank says it is doing: (kind, element type and op, length, root).
pub type Desc = [u64; 4];

pub fn type_code(name: &str, op: Option<Op>) -> u64 {
    let mut code = [0u8; 8];
    for (i, b) in name.bytes().take(7).enumerate() {
        code[i] = b;
    }
    code[7] = op.map_or(0, |o| o.code() as u8 + 1);
    u64::from_le_bytes(code)
}

pub fn describe(d: &Desc) -> String {
    let name = KINDS.iter().find(|(k, _)| *k as u64 == d[0]).map_or("?", |(_, n)| n);
    let bytes = d[1].to_le_bytes();
    let ty: String = bytes[..7].iter().take_while(|b| **b != 0).map(|b| *b as char).collect();
    let op = ["", "Sum", "Min", "Max", "Prod"].get(bytes[7] as usize).copied().unwrap_or("?");
    let mut s = name.to_string();
    if !ty.is_empty() {
        s.push_str(&format!("<{ty}>"));
    }
    if d[2] > 0 {
        s.push_str(&format!(" of {} elements", d[2]));
    }
    if !op.is_empty() {
        s.push_str(&format!(", {op}"));
    }
    if d[3] > 0 {
        s.push_str(&format!(", root {}", d[3] - 1));
    }
    s
}

/// A tag for a type, the same in every rank of a launch (FNV-1a of its name).
pub fn type_tag(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// When the ranks' descriptions (`theirs`, in rank order) differ from this rank's `desc`:
/// the ranks that differ, and what to tell the user. `ty`: the Rust type of a serialised
/// value (only its tag is in `desc`), to name when only types differ.
pub fn mismatch(op: &str, rank: usize, desc: &Desc, theirs: &[Desc], ty: Option<&str>) -> Option<(Vec<usize>, String)> {
    let odd: Vec<usize> = (0..theirs.len()).filter(|&r| theirs[r] != *desc).collect();
    if odd.is_empty() {
        return None;
    }
    let only_types_differ = odd.iter().all(|&r| theirs[r][0] == desc[0] && theirs[r][2..] == desc[2..]);
    if let (true, Some(ty)) = (only_types_differ, ty) {
        return Some((odd, format!("the ranks passed values of different types to {op} (rank {rank} passed a `{ty}`)")));
    }
    let calls: Vec<String> = theirs.iter().enumerate().map(|(r, d)| format!("rank {r}: {}", describe(d))).collect();
    Some((odd, format!("the ranks called different collectives here ({})", calls.join("; "))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_read_well() {
        let d = [Kind::AllReduce as u64, type_code("f32", Some(Op::Sum)), 1000, 0];
        assert_eq!(describe(&d), "all_reduce<f32> of 1000 elements, Sum");
        assert_eq!(describe(&[Kind::Barrier as u64, 0, 0, 0]), "barrier");
        assert_eq!(describe(&[Kind::Broadcast as u64, 0, 0, 3]), "broadcast, root 2");
    }

    #[test]
    fn mismatches_name_the_odd_ranks() {
        let d = |len| [Kind::AllReduce as u64, type_code("f32", Some(Op::Sum)), len, 0];
        assert_eq!(mismatch("all_reduce", 0, &d(4), &[d(4), d(4)], None), None);
        let (odd, why) = mismatch("all_reduce", 0, &d(4), &[d(4), d(3), d(4)], None).unwrap();
        assert_eq!(odd, [1]);
        assert!(why.contains("rank 1: all_reduce<f32> of 3 elements, Sum"), "{why}");
        let t = |ty| [Kind::AllGather as u64, type_tag(ty), 0, 0];
        let (odd, why) = mismatch("all_gather", 1, &t("u8"), &[t("u16"), t("u8")], Some("u8")).unwrap();
        assert_eq!(odd, [0]);
        assert!(why.contains("different types") && why.contains("rank 1 passed a `u8`"), "{why}");
    }
}
