// Package fleetsim owns the simulated fleet that checks the fleet report
// against real Prometheus servers: a plan of nodes (each with its own,
// known need distributions for a few loaders, exporter restarts, nodes
// that join within the window and nodes that leave), the ground truth that
// plan implies per loader (loads, truncations, needs as power-of-two
// bounds, recommended sizes, the defaults' truncated fractions), the nodes
// themselves (each a real otel.Pipeline and Recorder fed synthetic
// tracer.LoadEvents, served on its own path, /node/<id>/metrics, of one
// HTTP server), and Prometheus servers that scrape them through file_sd.
//
// It loads no BPF and reads no kernel; its test (TestFleetReportMatchesTruth)
// runs the plan in real time against a classic and a native-histogram
// Prometheus, both loading the repository's rules file after the run (a
// copy whose only change is group intervals of seconds, so that the 1d and
// 7d groups evaluate within the test), and compares fleet.Query's reports
// and the fleet recording rules' series, both arms, with the truth.
package fleetsim
