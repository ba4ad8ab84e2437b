{{/*
The objects' name: fullnameOverride, else the release name if it contains the
chart's name, else <release>-<chart>; at most 63 characters (DNS label).
*/}}
{{- define "verifierlog-exporter.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/*
chart label: name-version, "+" replaced as label values do not allow it.
*/}}
{{- define "verifierlog-exporter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Selector labels. app.kubernetes.io/name is the chart's name, never
overridden: the ServiceMonitor's jobLabel makes it the scrape job, which the
rules and the dashboard expect to be verifierlog-exporter.
*/}}
{{- define "verifierlog-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
Labels on every object's metadata: the selector labels, Helm's conventional
ones, and app.kubernetes.io/part-of as the kustomize base adds it.
*/}}
{{- define "verifierlog-exporter.labels" -}}
{{ include "verifierlog-exporter.selectorLabels" . }}
app.kubernetes.io/part-of: verifierlog-exporter
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "verifierlog-exporter.chart" . }}
{{- end -}}

{{/*
The image: repository:tag, the tag defaulting to the chart's appVersion.
*/}}
{{- define "verifierlog-exporter.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) -}}
{{- end -}}
