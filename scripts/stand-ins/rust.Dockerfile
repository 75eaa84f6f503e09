# Stand-in for rust:${RUST_VERSION}-bookworm, built by scripts/compose-test only
# when Docker Hub cannot be reached. It carries this machine's own Rust
# toolchain (copied from rustup) in the official image's layout
# (RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo) and trusts the
# machine's extra CA certificates, so that cargo inside the image build can
# download crates through the machine's TLS-inspecting proxy.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev make pkg-config \
 && rm -rf /var/lib/apt/lists/*
COPY ca-certificates/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
ARG RUST_TOOLCHAIN
COPY rustup/ /usr/local/rustup/
COPY cargo-bin/ /usr/local/cargo/bin/
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    RUSTUP_AUTO_INSTALL=0
RUN rustup default "$RUST_TOOLCHAIN" && cargo --version && rustc --version
LABEL org.wa-ingest.stand-in="rust: the machine's toolchain on debootstrapped Debian bookworm"
