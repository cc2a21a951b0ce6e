# Recipes mirror ./dev, which needs nothing but cargo and rustup.

# Build the guest components for wasm32-wasip2.
guests:
    ./dev guests

# Build the guests and run every test.
test:
    ./dev test

# Serve Orders.Process over HTTP and drive one operation through the client, with live progress.
run:
    ./dev run

# Serve Orders.Process on 127.0.0.1:8080 until interrupted (needs OPSHOST_JWT_SECRET).
serve:
    ./dev serve

# Bench the host against bare wasmtime, and HTTP against in-process.
bench:
    ./dev bench

# fmt and clippy.
check:
    ./dev check
