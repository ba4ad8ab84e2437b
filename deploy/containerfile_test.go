package deploy

// The container image: the Containerfile's stages, its build line making a
// static binary, and the ignore file sending the build what it reads.

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

type instruction struct {
	cmd, args string
}

type stage struct {
	from, name   string
	instructions []instruction
}

type containerfile struct{ stages []stage }

// build is the stage named "build".
func (c *containerfile) build() stage {
	for _, s := range c.stages {
		if s.name == "build" {
			return s
		}
	}
	return stage{}
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

func TestContainerfile(t *testing.T) {
	run, out, cf := containerBuildLine(t)
	if len(cf.stages) != 2 {
		t.Fatalf("want a build and a final stage, have %d stages", len(cf.stages))
	}
	// The build stage's Go matches go.mod's.
	gomod := string(mustRead(t, filepath.Join(moduleRoot(t), "go.mod")))
	m := regexp.MustCompile(`(?m)^go (1\.\d+)`).FindStringSubmatch(gomod)
	if m == nil {
		t.Fatal("go.mod has no go line")
	}
	if want := "golang:" + m[1]; !strings.HasSuffix(cf.stages[0].from, want) || cf.stages[0].name != "build" {
		t.Errorf("build stage FROM %s AS %s, want ...%s AS build", cf.stages[0].from, cf.stages[0].name, want)
	}
	if !strings.Contains(run, "CGO_ENABLED=0 go build") || !strings.HasSuffix(run, " ./cmd/exporter") || out != "/exporter" {
		t.Errorf("build line %q: want CGO_ENABLED=0 go build ... -o /exporter ./cmd/exporter", run)
	}
	final := cf.stages[1]
	if !strings.Contains(final.from, "distroless/static") && final.from != "scratch" {
		t.Errorf("final stage FROM %s, want distroless/static or scratch", final.from)
	}
	var copied, entry, user string
	for _, in := range final.instructions {
		switch in.cmd {
		case "COPY":
			if f := strings.Fields(in.args); len(f) == 3 && f[0] == "--from=build" && f[1] == out {
				copied = f[2]
			}
		case "ENTRYPOINT":
			var argv []string
			if err := json.Unmarshal([]byte(in.args), &argv); err != nil || len(argv) == 0 {
				t.Errorf("ENTRYPOINT %s is not an exec-form array", in.args)
			} else {
				entry = argv[0]
			}
		case "USER":
			user = in.args
		}
	}
	if copied == "" || entry != copied {
		t.Errorf("final stage: COPY --from=build %s -> %q, ENTRYPOINT %q", out, copied, entry)
	}
	if user != "0:0" && user != "0" && user != "root" {
		t.Errorf("USER %q: the exporter needs uid 0 (see the Containerfile's comment)", user)
	}

	// The build line really builds a static binary (what distroless/static
	// can run).
	checkStatic(t, exporterBinary(t))

	// Everything that build reads passes the Dockerfile-specific ignore file.
	ignore := parseIgnore(t, "Containerfile.dockerignore")
	root := moduleRoot(t)
	cmd := exec.Command("go", "list", "-deps", "-json=ImportPath,Dir,Module,GoFiles,EmbedFiles,SFiles", "./cmd/exporter")
	cmd.Dir = root
	listing, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	needed := []string{"go.mod", "go.sum"}
	dec := json.NewDecoder(bytes.NewReader(listing))
	for dec.More() {
		var pkg struct {
			Dir                         string
			Module                      *struct{ Main bool }
			GoFiles, EmbedFiles, SFiles []string
		}
		if err := dec.Decode(&pkg); err != nil {
			t.Fatal(err)
		}
		if pkg.Module == nil || !pkg.Module.Main {
			continue
		}
		for _, f := range slices.Concat(pkg.GoFiles, pkg.EmbedFiles, pkg.SFiles) {
			rel, err := filepath.Rel(root, filepath.Join(pkg.Dir, f))
			if err != nil {
				t.Fatal(err)
			}
			needed = append(needed, filepath.ToSlash(rel))
		}
	}
	for _, f := range needed {
		if !ignore.included(f) {
			t.Errorf("Containerfile.dockerignore leaves out %s, which the build needs", f)
		}
	}
	for _, f := range []string{".git/HEAD", "README.md", "vmtest/run.sh", "deploy/Containerfile", "tracer/harness_test.go"} {
		if ignore.included(f) {
			t.Errorf("Containerfile.dockerignore sends %s, which the build does not need", f)
		}
	}
	if len(needed) < 10 {
		t.Errorf("go list found only %v", needed)
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
