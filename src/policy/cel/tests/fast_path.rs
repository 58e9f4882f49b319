//! The fast path against the interpreter.

use super::*;

/// The fast path must agree with the interpreter on every input.
#[test]
fn fast_path_agrees_with_interpreter() {
    let fast = [
        SEED_PATH,
        SEED_AUTHORITY,
        "source.address",
        "request.method + ' ' + request.path",
        "'a' + 'b' + source.address + 'c' + 'd'",
        "('/w?addr=' + source.address) + ('&m=' + request.method)",
        r#""tab\there \u00e9 \x41 \101 \"q\"" + request.path"#,
        r#"r"raw\n" + '''triple 'quoted' ''' + """x""""#,
        "''",
        "'' + ''",
        "'\u{1F600}' + request.path + source.address",
    ];
    let slow = [
        "source.address + source.port",
        "source['address']",
        "request.headers.host",
        "string(source.port)",
        "1 + 2",
        "b'x'",
        "'a' + b'x'",
        "has(source.address)",
    ];
    let headers: &[(&str, &[u8])] = &[];
    let inputs = [
        request("100.84.21.7"),
        request("fd7a:115c:a1e0::b901:2c4d"),
        Vars {
            method: "",
            path: "",
            headers,
            ..request("")
        },
        Vars {
            method: "DELETE",
            path: "/mcp/é?q=\"%20",
            ..request("::1")
        },
    ];
    for src in fast {
        let expr = Expr::compile(src, REQUEST).unwrap();
        assert!(expr.is_fast_path(), "{src}");
        for vars in &inputs {
            let interpreted = expr.eval_interpreted(vars);
            assert!(interpreted.is_ok(), "{src}: {interpreted:?}");
            assert_eq!(expr.eval(vars), interpreted, "{src}");
            let mut buf = String::new();
            expr.eval_string_into(vars, &mut buf).unwrap();
            assert_eq!(Ok(Value::String(buf)), interpreted, "{src}");
        }
    }
    for src in slow {
        let expr = Expr::compile(src, REQUEST).unwrap();
        assert!(!expr.is_fast_path(), "{src}");
    }
}

/// `cargo test --release -- --ignored --nocapture timing`
#[test]
#[ignore]
fn timing() {
    use std::hint::black_box;
    use std::time::Instant;

    // Best of several batches: the machine is shared.
    fn ns_per(iters: u32, mut f: impl FnMut()) -> f64 {
        (0..5)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..iters {
                    f();
                }
                start.elapsed().as_nanos() as f64 / f64::from(iters)
            })
            .fold(f64::INFINITY, f64::min)
    }

    let path = Expr::compile(SEED_PATH, REQUEST).unwrap();
    let vars = request("100.84.21.7");
    let want = "/localapi/v0/whois?addr=100.84.21.7";
    assert_eq!(path.eval_string(&vars).unwrap(), want);
    let fast = ns_per(400_000, || {
        black_box(path.eval_string(black_box(&vars)).unwrap());
    });
    let mut buf = String::new();
    let reused = ns_per(400_000, || {
        buf.clear();
        path.eval_string_into(black_box(&vars), &mut buf).unwrap();
        black_box(&buf);
    });
    assert_eq!(buf, want);
    let slow = ns_per(100_000, || {
        black_box(path.eval_interpreted(black_box(&vars)).unwrap());
    });

    let name = Expr::compile("json(response.body).Node.Name", METADATA).unwrap();
    let alice = answer(WHOIS_ALICE);
    assert_eq!(
        name.eval_string(&alice).unwrap(),
        "alice-laptop.tail1234.ts.net."
    );
    let json = ns_per(20_000, || {
        black_box(name.eval_string(black_box(&alice)).unwrap());
    });
    // For scale: serde_json's own tree, without any CEL.
    let tree = ns_per(20_000, || {
        let v: serde_json::Value =
            serde_json::from_slice(black_box(WHOIS_ALICE.as_bytes())).unwrap();
        black_box(v["Node"]["Name"].as_str().unwrap().to_owned());
    });
    let method = Expr::compile("request.method == 'POST'", REQUEST).unwrap();
    let filter = ns_per(100_000, || {
        black_box(method.eval_bool(black_box(&vars)).unwrap());
    });
    println!("seed path, fast path:            {fast:8.1} ns/eval");
    println!("seed path, fast path into buffer:{reused:8.1} ns/eval");
    println!("seed path, interpreter:          {slow:8.1} ns/eval");
    println!("json(response.body).Node.Name:   {json:8.1} ns/eval (alice)");
    println!("serde_json::Value parse + index: {tree:8.1} ns (reference)");
    println!("request.method == 'POST':        {filter:8.1} ns/eval");
}

/// Which variables an expression reads decides whether its value can change
/// on a connection (`source.*` cannot).
#[test]
fn reads_only_names_the_variables_read() {
    let vars = ["source", "request", "extauthz"];
    let c = |src: &str| Expr::compile(src, &vars).unwrap();
    assert!(c(SEED_PATH).reads_only(&["source"]));
    assert!(c(SEED_AUTHORITY).reads_only(&["source"]));
    assert!(c("'constant'").reads_only(&["source"]));
    assert!(!c("source.address + request.path").reads_only(&["source"]));
    assert!(!c("request.headers['x'] == 'y'").reads_only(&["source"]));
    assert!(c("request.headers['x'] == 'y'").reads_only(&["request"]));
    assert!(!c("has(extauthz.k)").reads_only(&["source"]));
    // A comprehension's own variable is not one of the key's.
    assert!(c("[source.address].exists(request, request == '1')").reads_only(&["source"]));
    assert!(!c("[1].exists(x, request.path == '/')").reads_only(&["source"]));
}
