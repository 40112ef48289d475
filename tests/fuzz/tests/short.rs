//! The short form of the fuzz targets, for CI (`cargo test --workspace`): every seed in
//! `tests/fuzz/seeds/<target>/`, then a fixed number of deterministic mutations of them (bit flips,
//! byte insertions and deletions, splices of two seeds, interesting values). Nothing is caught: a
//! panic in a target fails the test. The long form is libFuzzer (deploy/fuzz-long).

use std::path::{Path, PathBuf};
use std::time::Instant;

/// Mutated runs per target after the seeds, sized for about 5 s in all in a debug build on an idle
/// 2-core machine and under 20 s on a busy one (the config parser is the slowest per run: TOML,
/// URLs, validation; hook_and_channel seals and opens with ring, slow without optimizations).
fn runs_for(target: &str) -> u64 {
    match target {
        "config" => 6_000,
        "hook_and_channel" => 15_000,
        _ => 30_000,
    }
}
/// Inputs never grow past this (libFuzzer's -max_len in deploy/fuzz-long).
const MAX_LEN: usize = 4096;

/// xorshift64*: deterministic, so a failure reproduces with the same seed files.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[&[u8]] = &[
    &[0x00],
    &[0xff],
    &[0x7f],
    &[0x80],
    &[0x30, 0x80],
    &[0x84, 0xff, 0xff, 0xff, 0xff],
    &[0xff, 0xff, 0xff, 0xff],
    b"\\",
    b"*",
    b"(",
    b")",
    b",",
    b"\"",
    b"=",
    b";range=",
    b"-*",
    b"fs1:",
    b"\\00",
    b"null",
    b"[[domain]]\n",
    b"\xc3\xa9",
    b"\xe2\x82",
    b"9999-12-31T23:59:60.999+23:59",
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(out.len() + 1);
                out.insert(i, rng.next() as u8);
            }
            2 if !out.is_empty() => {
                let i = rng.below(out.len());
                let n = 1 + rng.below((out.len() - i).min(16));
                out.drain(i..i + n);
            }
            3 => {
                // Splice: a prefix of this input and a suffix of another seed.
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(out.len() + 1);
                let from = rng.below(other.len() + 1);
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            4 => {
                let value = INTERESTING[rng.below(INTERESTING.len())];
                let i = rng.below(out.len() + 1);
                if rng.below(2) == 0 || i + value.len() > out.len() {
                    out.splice(i..i, value.iter().copied());
                } else {
                    out[i..i + value.len()].copy_from_slice(value);
                }
            }
            _ if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.next() as u8;
            }
            _ => out.push(rng.next() as u8),
        }
    }
    out.truncate(MAX_LEN);
    out
}

fn seeds_of(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

#[test]
fn every_target_survives_its_seeds_and_deterministic_mutations() {
    for (name, target) in forestsync_fuzz::TARGETS {
        let started = Instant::now();
        let seeds = seeds_of(name);
        for seed in &seeds {
            target(seed);
        }
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ name.len() as u64);
        let mut current = seeds[0].clone();
        let runs = runs_for(name);
        for run in 0..runs {
            // Mostly mutate a fresh seed; sometimes keep mutating the last input (deeper changes).
            if run % 4 != 3 {
                current = seeds[rng.below(seeds.len())].clone();
            }
            current = mutate(&mut rng, &seeds, &current);
            target(&current);
        }
        println!(
            "fuzz short form: {name}: {} seeds + {runs} mutated runs in {:.1} s, no panic",
            seeds.len(),
            started.elapsed().as_secs_f64()
        );
    }
}
