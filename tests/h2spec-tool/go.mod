// Builds h2spec, the HTTP/2 conformance tester the proxy's tests run (see ./build).
// Nothing here is imported by the Rust code. h2spec v2.2.1 is the newest version the module
// proxy serves here (it lists v1.5.0 and v2.2.1 only). golang.org/x/* are held at versions
// that build with Go 1.24, the oldest Go the project supports (see tests/kube-env).
module keygate.test/h2spec-tool

go 1.24.0

tool github.com/summerwind/h2spec/cmd/h2spec

require (
	github.com/fatih/color v1.18.0 // indirect
	github.com/inconshreveable/mousetrap v1.1.0 // indirect
	github.com/mattn/go-colorable v0.1.14 // indirect
	github.com/mattn/go-isatty v0.0.20 // indirect
	github.com/spf13/cobra v1.10.2 // indirect
	github.com/spf13/pflag v1.0.9 // indirect
	github.com/summerwind/h2spec v2.2.1+incompatible // indirect
	golang.org/x/net v0.38.0 // indirect
	golang.org/x/sys v0.31.0 // indirect
	golang.org/x/text v0.23.0 // indirect
)
