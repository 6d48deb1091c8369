{{/*
Labels every object of the chart carries (the app.kubernetes.io/*
recommended labels). Object names are fixed (`sluice`, `sluice-config`,
`sluice-metrics`): the agent, the CLI and the docs name them, and one
cluster has one CNI.
*/}}
{{- define "sluice.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "sluice.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sluice
{{- end }}

{{/*
What the Service and the DaemonSet select the agent's pods by; never
changes across upgrades (a DaemonSet's selector is immutable).
*/}}
{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end }}

{{/* The image of all three binaries. */}}
{{- define "sluice.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* Paths inside the containers; the host's are values (cni.binDir, cni.confDir). */}}
{{- define "sluice.cniBinDir" -}}/host/opt/cni/bin{{- end }}
{{- define "sluice.cniConfDir" -}}/host/etc/cni/net.d{{- end }}
{{- define "sluice.socket" -}}/var/run/sluice/sluice.sock{{- end }}
{{- define "sluice.stateDir" -}}/var/lib/sluice{{- end }}
{{- define "sluice.bpffs" -}}/sys/fs/bpf{{- end }}

{{/*
The agent's config file (controller/agent/src/config.rs, FileConfig:
camelCase keys, unknown keys rejected). Built as a dict so toYaml writes it
with sorted keys: the same values give the same bytes, and so the same
checksum on the pod template.
*/}}
{{- define "sluice.agentConfig" -}}
{{- $c := dict
  "datastore" "kubernetes"
  "routing" .Values.routing
  "masquerade" .Values.masquerade
  "kubeProxyReplacement" .Values.kubeProxyReplacement
  "metricsAddress" (printf "0.0.0.0:%d" (int .Values.metrics.port))
  "logLevel" .Values.logLevel
  "podAttachment" .Values.podAttachment
  "policyAuditMode" .Values.policyAuditMode
  "flows" (dict "record" .Values.flows.record "history" (int .Values.flows.history) "rate" (int .Values.flows.rate))
  "stateDir" (include "sluice.stateDir" .)
  "socket" (include "sluice.socket" .)
  "bpffs" (include "sluice.bpffs" .)
  "cgroupRoot" "/host/sys/fs/cgroup"
-}}
{{- if not (kindIs "invalid" .Values.mtu) }}
{{- $_ := set $c "mtu" (int .Values.mtu) }}
{{- end }}
{{- if .Values.mapSizes }}
{{- $sizes := dict }}
{{- range $key, $size := .Values.mapSizes }}
{{- $_ := set $sizes $key (int $size) }}
{{- end }}
{{- $_ := set $c "mapSizes" $sizes }}
{{- end }}
{{- toYaml $c }}
{{- end }}
