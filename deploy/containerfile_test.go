package deploy

// The container image's files: the Containerfile's one stage, which pulls
// and runs nothing, the build context deploy/build-image.sh fills for it
// (the static binary of each architecture and a CA bundle), and the ignore
// file sending the build what it copies. image_test.go builds and runs the
// image.

import (
	"encoding/json"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// buildScript builds the image's binaries with the host's Go, and the image.
const buildScript = "build-image.sh"

type instruction struct {
	cmd, args string
}

type stage struct {
	from, name   string
	instructions []instruction
}

type containerfile struct {
	stages []stage
}

func parseContainerfile(t testing.TB, path string) *containerfile {
	t.Helper()
	cf := &containerfile{}
	var cont string
	for _, line := range strings.Split(string(mustRead(t, path)), "\n") {
		trimmed := strings.TrimSpace(line)
		if cont == "" && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if strings.HasSuffix(trimmed, `\`) {
			cont += strings.TrimSuffix(trimmed, `\`) + " "
			continue
		}
		full := cont + trimmed
		cont = ""
		cmd, args, _ := strings.Cut(full, " ")
		cmd = strings.ToUpper(cmd)
		fields := strings.Fields(args)
		if cmd == "RUN" {
			// RUN's own flags (--mount=..., --network=...) are not the command.
			for len(fields) > 0 && strings.HasPrefix(fields[0], "--") {
				fields = fields[1:]
			}
		}
		args = strings.Join(fields, " ")
		if cmd == "FROM" {
			f := strings.Fields(args)
			s := stage{from: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				s.name = f[2]
			}
			cf.stages = append(cf.stages, s)
			continue
		}
		if len(cf.stages) == 0 {
			if cmd != "ARG" {
				t.Fatalf("%s: %s before FROM", path, cmd)
			}
			continue
		}
		cf.stages[len(cf.stages)-1].instructions = append(cf.stages[len(cf.stages)-1].instructions, instruction{cmd, args})
	}
	return cf
}

// imageBuildLine is buildScript's one go build line, which builds the
// binary the image copies (outside the image build, with the host's Go),
// and the output path it names.
func imageBuildLine(t testing.TB) (run, out string) {
	t.Helper()
	var lines []string
	for _, line := range strings.Split(string(mustRead(t, buildScript)), "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "#") && strings.Contains(line, " go build ") {
			lines = append(lines, line)
		}
	}
	if len(lines) != 1 {
		t.Fatalf("%s: want one go build line, have %d", buildScript, len(lines))
	}
	m := regexp.MustCompile(`\s-o\s+(\S+)`).FindStringSubmatch(lines[0])
	if m == nil {
		t.Fatalf("%s: the go build line has no -o: %s", buildScript, lines[0])
	}
	return lines[0], m[1]
}

// scriptDefault is the default of a variable buildScript sets as
// NAME=${NAME:-default}.
func scriptDefault(t testing.TB, name string) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + name + `=\$\{` + name + `:-([^}]*)\}`).FindStringSubmatch(string(mustRead(t, buildScript)))
	if m == nil {
		t.Fatalf("%s sets no default for %s", buildScript, name)
	}
	return m[1]
}

func TestContainerfile(t *testing.T) {
	cf := parseContainerfile(t, "Containerfile")
	if len(cf.stages) != 1 || cf.stages[0].from != "scratch" {
		t.Fatalf("want one stage FROM scratch (nothing to pull), have %+v", cf.stages)
	}
	final := cf.stages[0]
	arches := strings.Fields(scriptDefault(t, "ARCHES"))
	if !slices.Equal(arches, []string{"amd64", "arm64"}) {
		t.Errorf("%s builds %v by default, want amd64 and arm64", buildScript, arches)
	}

	// What the stage copies, for each architecture, from where.
	var args []string
	copied := map[string]string{} // destination -> source
	var entry, user, cmd string
	var exposed []string
	for _, in := range final.instructions {
		switch in.cmd {
		case "RUN":
			t.Errorf("RUN %s: the image build must run nothing (no toolchain, no emulation of another architecture)", in.args)
		case "ARG":
			name, _, _ := strings.Cut(in.args, "=")
			args = append(args, name)
		case "COPY", "ADD":
			f := strings.Fields(in.args)
			if in.cmd == "ADD" || len(f) != 2 || strings.HasPrefix(f[0], "--") {
				t.Errorf("%s %s: want a plain COPY <context path> <image path>", in.cmd, in.args)
				continue
			}
			for _, v := range regexp.MustCompile(`\$\{?(\w+)`).FindAllStringSubmatch(f[0], -1) {
				if !slices.Contains(args, v[1]) {
					t.Errorf("COPY %s uses %s before its ARG", in.args, v[1])
				}
			}
			copied[f[1]] = f[0]
		case "ENTRYPOINT":
			var argv []string
			if err := json.Unmarshal([]byte(in.args), &argv); err != nil || len(argv) == 0 {
				t.Errorf("ENTRYPOINT %s is not an exec-form array", in.args)
			} else {
				entry = argv[0]
			}
		case "CMD":
			cmd = in.args
		case "USER":
			user = in.args
		case "EXPOSE":
			exposed = append(exposed, strings.Fields(in.args)...)
		}
	}
	binSrc, ok := copied[entry]
	if !ok || binSrc != "${TARGETARCH}/exporter" {
		t.Errorf("ENTRYPOINT %q: want the binary COPY ${TARGETARCH}/exporter puts there, have copies %v", entry, copied)
	}
	if src := copied["/etc/ssl/certs/ca-certificates.crt"]; src != "ca-certificates.crt" {
		t.Errorf("want COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt (where crypto/x509 looks first), have copies %v", copied)
	}
	if user != "0:0" {
		t.Errorf("USER %q: want 0:0, uid 0 (see the Containerfile's comment) numerically, which needs no /etc/passwd", user)
	}
	port := strconv.Itoa(metricsPort)
	if !slices.Contains(exposed, port) && !slices.Contains(exposed, port+"/tcp") {
		t.Errorf("EXPOSE %v, want %d", exposed, metricsPort)
	}
	if !strings.Contains(cmd, "--web.listen-address=:"+port) {
		t.Errorf("CMD %s does not listen on :%d", cmd, metricsPort)
	}

	// The script builds the binary the stage copies: a static binary
	// (what scratch can run) into <context>/<arch>/exporter.
	run, out := imageBuildLine(t)
	for _, want := range []string{"CGO_ENABLED=0 ", "GOARCH=\"$arch\"", " -trimpath ", `-ldflags "-s -w `, " ./cmd/exporter"} {
		if !strings.Contains(run, want) {
			t.Errorf("%s: build line %q lacks %q", buildScript, run, want)
		}
	}
	if want := `"$ctx/$arch/exporter"`; out != want {
		t.Errorf("%s: the binary goes to %s, want %s (the Containerfile copies ${TARGETARCH}/exporter)", buildScript, out, want)
	}
	if !strings.Contains(string(mustRead(t, buildScript)), `cp "$CA_BUNDLE" "$ctx/ca-certificates.crt"`) {
		t.Errorf("%s does not put the CA bundle at ca-certificates.crt of the context", buildScript)
	}
	checkStatic(t, exporterBinary(t))

	// Everything the stage copies, for every architecture, passes the
	// ignore file; nothing else does.
	ignore := parseIgnore(t, "Containerfile.dockerignore")
	for _, arch := range arches {
		for _, src := range copied {
			path := strings.ReplaceAll(strings.ReplaceAll(src, "${TARGETARCH}", arch), "$TARGETARCH", arch)
			if !ignore.included(path) {
				t.Errorf("Containerfile.dockerignore leaves out %s, which the %s image copies", path, arch)
			}
		}
	}
	for _, f := range []string{".git/HEAD", "README.md", "go.mod", "cmd/exporter/main.go", "tracer/verifierlog_x86_bpfel.o", "riscv64/exporter", "amd64/exporter.old", "amd64/notes.txt"} {
		if ignore.included(f) {
			t.Errorf("Containerfile.dockerignore sends %s, which the image does not copy", f)
		}
	}
}

// ignoreFile is a .dockerignore: patterns in order, the last match decides,
// "!" re-includes; "**" matches any number of directories.
type ignoreFile []struct {
	re      *regexp.Regexp
	include bool
}

func parseIgnore(t *testing.T, path string) ignoreFile {
	t.Helper()
	var f ignoreFile
	for _, line := range strings.Split(string(mustRead(t, path)), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		include := strings.HasPrefix(line, "!")
		pat := strings.TrimPrefix(strings.TrimPrefix(line, "!"), "/")
		var re strings.Builder
		re.WriteString("^")
		for i := 0; i < len(pat); i++ {
			switch {
			case strings.HasPrefix(pat[i:], "**/"):
				re.WriteString("(.*/)?")
				i += 2
			case strings.HasPrefix(pat[i:], "**"):
				re.WriteString(".*")
				i++
			case pat[i] == '*':
				re.WriteString("[^/]*")
			case pat[i] == '?':
				re.WriteString("[^/]")
			default:
				re.WriteString(regexp.QuoteMeta(pat[i : i+1]))
			}
		}
		// A pattern that matches a directory covers what is inside it.
		re.WriteString("(/.*)?$")
		f = append(f, struct {
			re      *regexp.Regexp
			include bool
		}{regexp.MustCompile(re.String()), include})
	}
	return f
}

func (f ignoreFile) included(path string) bool {
	in := true
	for _, p := range f {
		if p.re.MatchString(path) {
			in = p.include
		}
	}
	return in
}
