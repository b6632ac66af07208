//! The real protocol code ([`clusterd::core::Core`]) for N nodes over a simulated LAN with
//! loss: how long a new serial takes to reach every member, in how many rounds (hops from the
//! node where it was put), what it costs per node, and how long from a node reporting lost
//! integrity to its quarantine on every peer. Simulated time, so the numbers do not depend on
//! this machine's load.
//!
//! `cargo run --release -p clusterd --example simulate -- [nodes] [loss] [seed] [quarantine after s]`
//! (defaults 1000, 0.05, 1, 5). Model: datagrams are lost with probability `loss` and delayed
//! 0.2-2 ms; a policy fetch takes two delays plus the policy's size at 1 Gbit/s, and with
//! probability `loss` one TCP retransmission timeout (200 ms) more; heartbeats every 1 s at
//! a random phase.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use clusterd::core::{Action, Config, Core};
use policy::NodeId;
use proto::cluster::{Heartbeat, Integrity, Message};
use rand_core::RngCore;

/// A small deterministic generator (simulation only; not for anything secret).
struct SplitMix(u64);

impl RngCore for SplitMix {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for b in dest {
            *b = self.next_u64() as u8;
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl SplitMix {
    fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    fn micros(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_micros(lo + self.next_u64() % (hi - lo))
    }
}

enum Event {
    Deliver {
        to: usize,
        from: usize,
        msg: Message,
    },
    Fetched {
        node: usize,
        from: usize,
        serial: u64,
    },
    Tick {
        node: usize,
    },
}

struct Sim {
    cores: Vec<Core>,
    hearts: Vec<Heartbeat>,
    queue: BinaryHeap<Reverse<(Duration, u64, usize)>>,
    events: Vec<Option<Event>>,
    seq: u64,
    rng: SplitMix,
    loss: f64,
    policy_bytes: usize,
    /// Per node: when it got the new serial, and in how many hops.
    got: Vec<Option<(Duration, u32)>>,
    sent_bytes: Vec<u64>,
    fetches: u64,
    /// When each node quarantined the tampered one.
    quarantined_at: Vec<Option<Duration>>,
    tampered: usize,
    tamper_started: bool,
    /// Quarantines of healthy nodes (silence from consecutive lost heartbeats).
    false_quarantines: u64,
    /// The encoded size of the last message sent (a tick sends the same one to every peer).
    last: Option<(Message, u64)>,
}

fn id(i: usize) -> NodeId {
    NodeId::new(i as u16 + 1).unwrap()
}

impl Sim {
    fn at(&mut self, t: Duration, e: Event) {
        self.seq += 1;
        self.events.push(Some(e));
        self.queue
            .push(Reverse((t, self.seq, self.events.len() - 1)));
    }

    fn carry_out(&mut self, node: usize, actions: Vec<Action>, now: Duration) {
        for a in actions {
            match a {
                Action::Send { to, msg } => {
                    let to = to.get() as usize - 1;
                    let size = match &self.last {
                        Some((m, size)) if *m == msg => *size,
                        _ => {
                            let size = msg.encode().len() as u64 + 28;
                            self.last = Some((msg.clone(), size));
                            size
                        }
                    };
                    self.sent_bytes[node] += size;
                    if !self.rng.chance(self.loss) {
                        let t = now + self.rng.micros(200, 2000);
                        self.at(
                            t,
                            Event::Deliver {
                                to,
                                from: node,
                                msg,
                            },
                        );
                    }
                }
                Action::Fetch { from, serial } => {
                    let from = from.get() as usize - 1;
                    self.fetches += 1;
                    self.sent_bytes[from] += self.policy_bytes as u64;
                    let transfer = Duration::from_nanos(self.policy_bytes as u64 * 8);
                    let mut t = now + self.rng.micros(200, 2000) * 2 + transfer;
                    if self.rng.chance(self.loss) {
                        t += Duration::from_millis(200);
                    }
                    self.at(t, Event::Fetched { node, from, serial });
                }
                Action::Quarantine { node: q, .. }
                    if q == id(self.tampered) && self.tamper_started =>
                {
                    self.quarantined_at[node].get_or_insert(now);
                }
                Action::Quarantine { .. } => self.false_quarantines += 1,
                _ => {}
            }
        }
    }

    fn run_until(&mut self, end: Duration, members: &[(NodeId, String)]) {
        while let Some(Reverse((t, _, i))) = self.queue.peek().copied() {
            if t > end {
                break;
            }
            self.queue.pop();
            let Some(e) = self.events[i].take() else {
                continue;
            };
            match e {
                Event::Deliver { to, from, msg } => {
                    let a = self.cores[to].receive(id(from), msg, t);
                    self.carry_out(to, a, t);
                }
                Event::Fetched { node, from, serial } => {
                    if serial > self.cores[node].serial() {
                        let hops = self.got[from].map_or(0, |(_, h)| h) + 1;
                        self.got[node].get_or_insert((t, hops));
                        self.hearts[node].serial = serial;
                        let cfg = self.cores[node].config().clone();
                        let a = self.cores[node].policy_in_force(
                            cfg,
                            serial,
                            "new",
                            members,
                            t,
                            &mut self.rng,
                        );
                        self.carry_out(node, a, t);
                    }
                    let next = self.cores[node].fetch_done(
                        id(from),
                        clusterd::core::Fetched::Delivered { serial },
                        t,
                    );
                    self.carry_out(node, next.into_iter().collect(), t);
                }
                Event::Tick { node } => {
                    let hb = self.hearts[node].clone();
                    let a = self.cores[node].tick(&hb, t, &mut self.rng);
                    self.carry_out(node, a, t);
                    self.at(t + Duration::from_secs(1), Event::Tick { node });
                }
            }
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(1000, |a| a.parse().expect("nodes"));
    let loss: f64 = args.next().map_or(0.05, |a| a.parse().expect("loss"));
    let seed: u64 = args.next().map_or(1, |a| a.parse().expect("seed"));
    let after: u64 = args
        .next()
        .map_or(5, |a| a.parse().expect("quarantine after (s)"));
    // The policy's real size for this many nodes (what a fetch carries).
    let mut text = policy::template::init_template("sim", jiff::Timestamp::now());
    for i in 1..=n {
        text.push_str(&format!(
            "\n[[node]]\nid = {i}\nname = \"n{i}\"\npublic_key = \"{}\"\nendpoint = \"198.18.{}.{}:51820\"\naddresses = [\"10.{}.{}.{}\"]\n",
            policy::WgPublicKey::from_bytes([i as u8; 32]),
            i / 250, i % 250 + 1, i / 62500, (i / 250) % 250, i % 250 + 1
        ));
    }
    let members: Vec<(NodeId, String)> = (0..n).map(|i| (id(i), format!("n{}", i + 1))).collect();
    let mut rng = SplitMix(seed);
    let mut sim = Sim {
        cores: Vec::new(),
        hearts: Vec::new(),
        queue: BinaryHeap::new(),
        events: Vec::new(),
        seq: 0,
        rng: SplitMix(seed ^ 0xABCD),
        loss,
        policy_bytes: text.len() + 120,
        got: vec![None; n],
        sent_bytes: vec![0; n],
        fetches: 0,
        quarantined_at: vec![None; n],
        tampered: 6.min(n - 1),
        tamper_started: false,
        false_quarantines: 0,
        last: None,
    };
    for i in 0..n {
        let cfg = Config {
            me: id(i),
            heartbeat: Duration::from_secs(1),
            quarantine: true,
            quarantine_after: Duration::from_secs(after),
            certainty_exempt: Default::default(),
            master: false,
            attest: None,
        };
        let mut c = Core::new(cfg.clone());
        c.policy_in_force(cfg, 1, "old", &members, Duration::ZERO, &mut rng);
        sim.cores.push(c);
        sim.hearts.push(Heartbeat {
            node: id(i).get(),
            boot_id: format!("{:032x}", rng.next_u64()),
            seq: 1,
            serial: 1,
            digest: "0".repeat(64),
            integrity: Integrity::Verifying,
            stable_root: Some("0".repeat(64)),
            root_matches: Some(true),
            last_verification: Some("2026-11-22T12:00:00Z".into()),
            uptime_s: 100,
            load1: 0.1,
            mem_available_kb: 1 << 20,
            memberships: Default::default(),
            challenge: None,
        });
        let phase = Duration::from_micros(rng.next_u64() % 1_000_000);
        sim.at(phase, Event::Tick { node: i });
    }
    // Two heartbeat rounds so everyone has heard everyone, then the new serial on node 1.
    let t0 = Duration::from_secs(2);
    sim.run_until(t0, &members);
    let before: Vec<u64> = sim.sent_bytes.clone();
    sim.got[0] = Some((t0, 0));
    sim.hearts[0].serial = 2;
    let cfg = sim.cores[0].config().clone();
    let a = sim.cores[0].policy_in_force(cfg, 2, "new", &members, t0, &mut rng);
    sim.carry_out(0, a, t0);
    sim.run_until(t0 + Duration::from_secs(10), &members);
    let reached: Vec<Duration> = sim
        .got
        .iter()
        .filter_map(|g| g.map(|(t, _)| t - t0))
        .collect();
    let all = reached.len() == n;
    let mut sorted = reached.clone();
    sorted.sort();
    let pct = |p: f64| sorted[((sorted.len() - 1) as f64 * p) as usize];
    let rounds = sim
        .got
        .iter()
        .filter_map(|g| g.map(|(_, h)| h))
        .max()
        .unwrap_or(0);
    let spent: Vec<u64> = sim
        .sent_bytes
        .iter()
        .zip(&before)
        .map(|(a, b)| a - b)
        .collect();
    let mean = spent.iter().sum::<u64>() as f64 / n as f64;
    println!(
        "{n} nodes, {:.0}% loss, policy {} KB: new serial on {} of {n} members; p50 {} ms, p99 {} ms, p100 {} ms (simulated); {rounds} rounds (hops); {} fetches",
        loss * 100.0,
        sim.policy_bytes / 1024,
        reached.len(),
        pct(0.5).as_millis(),
        pct(0.99).as_millis(),
        pct(1.0).as_millis(),
        sim.fetches
    );
    println!(
        "  bytes sent per node over those 10 s: mean {:.0} KB (heartbeats to every peer each second, offers, policies served); max {} KB",
        mean / 1024.0,
        spent.iter().max().unwrap_or(&0) / 1024
    );
    // Tamper: node 7 reports lost integrity (told at once, as clusterd does on a change).
    let t1 = t0 + Duration::from_secs(10);
    let bad = sim.tampered;
    sim.hearts[bad].integrity = Integrity::Lost;
    let hb = sim.hearts[bad].clone();
    sim.quarantined_at = vec![None; n];
    sim.tamper_started = true;
    let false_quarantines = sim.false_quarantines;
    // Told at once and at the next two polls (200 ms apart), as clusterd does.
    for k in 0..3u32 {
        let t = t1 + Duration::from_millis(200) * k;
        sim.run_until(t, &members);
        let a = sim.cores[bad].announce(&hb);
        sim.carry_out(bad, a, t);
    }
    sim.run_until(t1 + Duration::from_secs(5), &members);
    let q: Vec<Duration> = sim
        .quarantined_at
        .iter()
        .filter_map(|t| t.map(|t| t - t1))
        .collect();
    let worst = q.iter().max().copied().unwrap_or_default();
    println!(
        "  tamper to quarantine: node {} quarantined by {} of {} peers; slowest after {} ms (simulated; a lost datagram waits for the next heartbeat)",
        bad + 1,
        q.len(),
        n - 1,
        worst.as_millis()
    );
    println!(
        "  healthy nodes quarantined for silence (consecutive lost heartbeats, {:.0}% loss, quarantine after {after} heartbeats) in the first 12 s: {false_quarantines} quarantines over {} peer pairs",
        loss * 100.0,
        n * (n - 1)
    );
    if !all {
        std::process::exit(1);
    }
}
