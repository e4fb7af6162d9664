//! Property tests: random arguments on the default profile, random profiles.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::super::syscalls;
use super::bpf::Data;
use super::{OPS, Programs, default_programs};

const ACTIONS: [(&str, Option<u64>); 8] = [
    ("SCMP_ACT_ALLOW", None),
    ("SCMP_ACT_ERRNO", None),
    ("SCMP_ACT_ERRNO", Some(13)),
    ("SCMP_ACT_ERRNO", Some(38)),
    ("SCMP_ACT_KILL_PROCESS", None),
    ("SCMP_ACT_KILL", None),
    ("SCMP_ACT_TRAP", None),
    ("SCMP_ACT_LOG", None),
];

fn arb_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..8,
        Just(0xffff_ffff),
        Just(1 << 32),
        Just(u64::MAX),
        any::<u32>().prop_map(u64::from),
        any::<u64>(),
        (0u64..4, 0u64..4).prop_map(|(h, l)| (h << 32) | l),
    ]
}

fn action_json(entry: &mut serde_json::Map<String, Value>, a: usize) {
    let (name, errno) = ACTIONS[a];
    entry.insert("action".into(), json!(name));
    if let Some(e) = errno {
        entry.insert("errnoRet".into(), json!(e));
    }
}

/// A random profile over a few syscalls (numbers 0..16 and 56..60): unconditional
/// rules and up to 12 conditional rules of up to 3 conditions.
fn arb_profile() -> impl Strategy<Value = String> {
    let nrs = prop_oneof![0usize..16, 56usize..60];
    let cond = (0u64..6, 0usize..OPS.len(), arb_value(), arb_value());
    let conditional = (
        nrs.clone(),
        0..ACTIONS.len(),
        prop::collection::vec(cond, 1..4),
    );
    (
        0..ACTIONS.len(),
        prop::collection::btree_map(nrs, 0..ACTIONS.len(), 0..12),
        prop::collection::vec(conditional, 0..12),
    )
        .prop_map(|(default, unconditional, conditional)| {
            let name = |nr: usize| syscalls::SYSCALLS_X86_64[nr].0;
            let mut rules = Vec::new();
            for (nr, a) in unconditional {
                let mut entry = serde_json::Map::new();
                entry.insert("names".into(), json!([name(nr)]));
                action_json(&mut entry, a);
                rules.push(Value::Object(entry));
            }
            for (nr, a, conds) in conditional {
                let mut entry = serde_json::Map::new();
                entry.insert("names".into(), json!([name(nr)]));
                action_json(&mut entry, a);
                let args: Vec<Value> = conds
                    .into_iter()
                    .map(|(index, op, value, two)| {
                        json!({"index": index, "op": OPS[op], "value": value, "valueTwo": two})
                    })
                    .collect();
                entry.insert("args".into(), json!(args));
                rules.push(Value::Object(entry));
            }
            let mut profile = serde_json::Map::new();
            action_json(&mut profile, default);
            let action = profile.remove("action").expect("action");
            profile.insert("defaultAction".into(), action);
            if let Some(e) = profile.remove("errnoRet") {
                profile.insert("defaultErrnoRet".into(), e);
            }
            profile.insert("syscalls".into(), json!(rules));
            Value::Object(profile).to_string()
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        // Failing cases are printed, not written under proptest-regressions/.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn default_profile_on_random_arguments(
        nr in prop::sample::select(vec![41u32, 56, 135, 435, 0, 1, 57, 165]),
        args in prop::array::uniform6(prop_oneof![any::<u64>(), any::<u32>().prop_map(u64::from)]),
        bits in prop::collection::vec(0u32..64, 0..4),
    ) {
        let p = default_programs();
        // Random words, and small values with a few bits set (namespace flags).
        let mut small = [0u64; 6];
        for bit in bits {
            small[0] |= 1 << bit;
        }
        for args in [args, small] {
            let data = Data::x86_64(nr, args);
            if let Err(e) = p.agree(&data) {
                prop_assert!(false, "{}", e);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        // Failing cases are printed, not written under proptest-regressions/.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_profiles_are_equivalent(
        json in arb_profile(),
        samples in prop::collection::vec(
            (prop_oneof![0u32..20, 54u32..62], prop::array::uniform6(arb_value())),
            64,
        ),
    ) {
        let p = Programs::new(&json, 0);
        let values = p.oracle.boundary_values();
        let mut cases: Vec<Data> =
            samples.iter().map(|(nr, args)| Data::x86_64(*nr, *args)).collect();
        for nr in p.oracle.conditioned() {
            for index in 0..6 {
                for value in &values {
                    let mut args = [0; 6];
                    args[index] = *value;
                    cases.push(Data::x86_64(nr, args));
                }
            }
        }
        for nr in (0..70).chain([0x4000_0000, 0x4000_0001, u32::MAX]) {
            cases.push(Data::x86_64(nr, [0; 6]));
        }
        for data in cases {
            if let Err(e) = p.agree(&data) {
                prop_assert!(false, "{}\n{}", e, json);
            }
        }
    }
}
