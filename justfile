# Recipes mirror ./dev, which needs nothing but cargo and rustup.

# Build the guest components for wasm32-wasip2.
guests:
    ./dev guests

# Build the guests and run every test.
test:
    ./dev test

# Serve Orders.Process and show one operation's live progress and result.
run:
    ./dev run

# Bench the host against bare wasmtime.
bench:
    ./dev bench

# fmt and clippy.
check:
    ./dev check
