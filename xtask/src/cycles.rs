//! `cargo xtask cycles [crate ...]`: the module cycles inside each crate
//! (by default `booking`, `signaling` and `web`), from cargo-modules'
//! dependency graph. Exits non-zero when there is one.
//!
//! cargo-modules draws an edge from each item (and each method, filed under
//! its type) to every item it names. Each end is counted in the module that
//! defines it: the nearest enclosing path that is a source file of the
//! crate. The strongly connected parts of the resulting module graph with
//! more than one module are the cycles. (cargo-modules' own `--acyclic`
//! counts a type and its methods as a cycle, so it fails on every crate.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

use crate::process::{has, run as run_command};

/// The newest cargo-modules that builds with the pinned toolchain.
const CARGO_MODULES: &str = "0.27.0";

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let crates: Vec<&str> = if args.is_empty() {
        vec!["booking", "signaling", "web"]
    } else {
        args.iter().map(String::as_str).collect()
    };
    if !has("cargo-modules") {
        run_command(
            "cargo",
            &[
                "install",
                "cargo-modules",
                "--version",
                CARGO_MODULES,
                "--locked",
            ],
        )?;
    }
    let mut found = false;
    for name in crates {
        let dot = Command::new("cargo")
            .args([
                "modules",
                "dependencies",
                "--package",
                name,
                "--lib",
                "--no-externs",
                "--no-sysroot",
                "--no-owns",
            ])
            .output()
            .context("running cargo modules")?;
        if !dot.status.success() {
            bail!(
                "cargo modules failed for {name}: {}",
                String::from_utf8_lossy(&dot.stderr)
            );
        }
        let modules = source_modules(name)?;
        let graph = module_graph(&String::from_utf8_lossy(&dot.stdout), &modules);
        let cycles = cycles(&graph);
        if cycles.is_empty() {
            println!("{name}: no module cycle");
        }
        for cycle in &cycles {
            found = true;
            println!("{name}: a cycle among {}", cycle.join(", "));
            for from in cycle {
                for (to, why) in &graph[from] {
                    if cycle.contains(to) {
                        println!("    {from} -> {to}: {}", why.join("; "));
                    }
                }
            }
        }
    }
    if found {
        bail!("module cycles found");
    }
    Ok(())
}

/// The module paths of `name`'s source files: `booking`, `booking::db`,
/// `booking::bookings::place`, ...
fn source_modules(name: &str) -> anyhow::Result<BTreeSet<String>> {
    let root = name.replace('-', "_");
    let src = Path::new(name).join("src");
    let mut modules = BTreeSet::from([root.clone()]);
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir:?}"))? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(&src)?.with_extension("");
            let mut parts: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            if parts == ["lib"] || parts == ["main"] || parts.is_empty() {
                continue;
            }
            modules.insert(format!("{root}::{}", parts.join("::")));
        }
    }
    Ok(modules)
}

/// Each module's uses of other modules, with up to three examples of the
/// items behind each, from cargo-modules' DOT output.
type Graph = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn module_graph(dot: &str, modules: &BTreeSet<String>) -> Graph {
    let module_of = |item: &str| -> String {
        let mut path = item;
        while !modules.contains(path) {
            match path.rsplit_once("::") {
                Some((parent, _)) => path = parent,
                None => break,
            }
        }
        path.to_owned()
    };
    let mut graph: Graph = modules
        .iter()
        .map(|m| (m.clone(), BTreeMap::new()))
        .collect();
    for line in dot.lines() {
        // "a::b" -> "c::d" [label="uses", ...]; // "uses" edge
        if !line.contains("[label=\"uses\"") {
            continue;
        }
        let quoted: Vec<&str> = line.split('"').collect();
        let (Some(from), Some(to)) = (quoted.get(1), quoted.get(3)) else {
            continue;
        };
        let (a, b) = (module_of(from), module_of(to));
        if a != b {
            let why = graph.entry(a).or_default().entry(b).or_default();
            if why.len() < 3 {
                why.push(format!("{from} uses {to}"));
            }
        }
    }
    graph
}

/// The strongly connected parts of `graph` with more than one module
/// (Tarjan's algorithm), each sorted.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct Walk<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, v: &'g str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flat_map(|edges| edges.keys()) {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut part = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    part.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if part.len() > 1 {
                    part.sort();
                    self.found.push(part);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(edges: &[(&str, &str)], expected: &[&[&str]]) {
        let modules: BTreeSet<String> = ["k", "k::a", "k::b", "k::c", "k::a::inner"]
            .into_iter()
            .map(String::from)
            .collect();
        let dot: String = edges
            .iter()
            .map(|(from, to)| {
                format!("    \"{from}\" -> \"{to}\" [label=\"uses\", color=\"#7f7f7f\"]; // \"uses\" edge\n")
            })
            .collect();
        let found = cycles(&module_graph(&dot, &modules));
        let expected: Vec<Vec<String>> = expected
            .iter()
            .map(|part| part.iter().map(|m| m.to_string()).collect())
            .collect();
        assert_eq!(found, expected, "{edges:?}");
    }

    #[test]
    fn items_and_methods_count_in_their_module() {
        // A method is filed under its type, which lives in its module.
        check(&[("k::a::Thing::method", "k::b::Other")], &[]);
        check(
            &[
                ("k::a::Thing::method", "k::b::Other"),
                ("k::b::Other", "k::a::Thing"),
            ],
            &[&["k::a", "k::b"]],
        );
        // An item of a module's own is no edge, and a child is its own module.
        check(
            &[("k::a::x", "k::a::y"), ("k::a::inner::z", "k::b::w")],
            &[],
        );
        check(
            &[
                ("k::a::x", "k::b::y"),
                ("k::b::y", "k::c::z"),
                ("k::c::z", "k::a::x"),
            ],
            &[&["k::a", "k::b", "k::c"]],
        );
    }
}
