//! The harnesses without AFL++: every committed seed of every target, and a fixed number of
//! deterministic mutations of each (`scripts/test` runs this in CI for all eleven targets; the six
//! that need the cloud SDKs, Cedar or the server cannot be built under cargo-afl within CI's
//! budget, so this is what keeps them from rotting between long runs: they compile against the
//! current crates, they accept their seeds, and simple mutations of those do not break an
//! invariant). Not coverage-guided: the long runs (`scripts/fuzz`) are.
//!
//! `KEYWARD_FUZZ_REPLAY_MUTATIONS` sets the mutations per seed (default 3000).

use std::path::{Path, PathBuf};

use super::{TARGETS, harness};

/// xorshift64*: deterministic, so a failure replays with the same input.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n.max(1) as u64)).unwrap()
    }
}

/// One of AFL++'s simpler havoc steps on `seed`: flip a bit, set an interesting byte, drop,
/// duplicate or truncate a run of bytes, or splice in a run of another seed.
fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let len = out.len();
        match rng.below(6) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                out[i] = [0x00, 0x01, 0x7f, 0x80, 0xff, b'"', b'=', b'\n'][rng.below(8)];
            }
            2 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(16)).min(len);
                out.drain(start..end);
            }
            3 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(16)).min(len);
                let run = out[start..end].to_vec();
                let at = rng.below(len + 1);
                out.splice(at..at, run);
            }
            4 => out.truncate(rng.below(len + 1)),
            _ if !other.is_empty() => {
                let start = rng.below(other.len());
                let end = (start + 1 + rng.below(32)).min(other.len());
                let at = rng.below(len + 1);
                out.splice(at..at, other[start..end].iter().copied());
            }
            _ => out.push(rng.next().to_le_bytes()[0]),
        }
    }
    out
}

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (write it with `scripts/fuzz seeds`)",
                dir.display()
            )
        })
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

#[test]
fn every_seed_and_its_mutations_pass_through_every_target() {
    let mutations: usize = std::env::var("KEYWARD_FUZZ_REPLAY_MUTATIONS")
        .ok()
        .map_or(3000, |n| n.parse().expect("a number"));
    for target in TARGETS {
        let run = harness(target).unwrap_or_else(|| {
            panic!("{target}: built without its feature (run with the defaults)")
        });
        let seeds = corpus(target);
        assert!(!seeds.is_empty(), "{target}: no committed seeds");
        let mut rng = Rng(0x6b65_7977_6172_6421 ^ target.len() as u64);
        for (i, (path, seed)) in seeds.iter().enumerate() {
            run(seed);
            let other = &seeds[(i + 1) % seeds.len()].1;
            for n in 0..mutations {
                let input = mutate(&mut rng, seed, other);
                let outcome = std::panic::catch_unwind(|| run(&input));
                assert!(
                    outcome.is_ok(),
                    "{target}: mutation {n} of {} broke an invariant; input (hex): {}",
                    path.display(),
                    input.iter().map(|b| format!("{b:02x}")).collect::<String>()
                );
            }
        }
        eprintln!(
            "{target}: {} seeds, {} mutations each",
            seeds.len(),
            mutations
        );
    }
}
