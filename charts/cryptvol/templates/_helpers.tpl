{{/* Names, labels and checks shared by the templates. */}}

{{- define "cryptvol.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release-scoped base name of every object: the release name, or release-chart. */}}
{{- define "cryptvol.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "cryptvol.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cryptvol.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "cryptvol.labels" -}}
{{ include "cryptvol.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "cryptvol.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "cryptvol.controllerName" -}}
{{- printf "%s-controller" (include "cryptvol.fullname" .) -}}
{{- end -}}

{{- define "cryptvol.nodeName" -}}
{{- printf "%s-node" (include "cryptvol.fullname" .) -}}
{{- end -}}

{{- define "cryptvol.kmsConfigMapName" -}}
{{- printf "%s-kms" (include "cryptvol.fullname" .) -}}
{{- end -}}

{{/* Whether the controller sidecars elect a leader. */}}
{{- define "cryptvol.leaderElection" -}}
{{- if or .Values.controller.leaderElection (gt (int .Values.controller.replicas) 1) -}}true{{- end -}}
{{- end -}}

{{/* The KMS configuration as written into the ConfigMap (checked here, hashed by the pods). */}}
{{- define "cryptvol.kmsConfig" -}}
{{- $kms := .Values.kms.config -}}
{{- if not (kindIs "map" $kms) -}}
{{- fail "kms.config must be a map: default: NAME, connections: {NAME: {provider: ..., ...}}" -}}
{{- end -}}
{{- if not $kms.default -}}
{{- fail "kms.config.default must name one of kms.config.connections" -}}
{{- end -}}
{{- if not (hasKey (default dict $kms.connections) $kms.default) -}}
{{- fail (printf "kms.config.default %q is not among kms.config.connections" $kms.default) -}}
{{- end -}}
{{- toYaml $kms -}}
{{- end -}}

{{/* Environment and mounts that both plugins share. */}}
{{- define "cryptvol.commonEnv" -}}
- name: CRYPTVOL_ENDPOINT
  value: unix:///csi/csi.sock
- name: CRYPTVOL_BACKING_ROOT
  value: {{ .Values.backingStore.mountPath | quote }}
- name: CRYPTVOL_KMS_CONFIG
  value: /etc/cryptvol/config/kms.yaml
- name: CRYPTVOL_LOG_FORMAT
  value: {{ .Values.log.format | quote }}
- name: CRYPTVOL_LOG_LEVEL
  value: {{ .Values.log.level | quote }}
{{- end -}}

{{- define "cryptvol.commonMounts" -}}
- name: socket-dir
  mountPath: /csi
- name: backing-root
  mountPath: {{ .Values.backingStore.mountPath }}
  {{- if eq .Values.backingStore.type "hostPath" }}
  mountPropagation: HostToContainer
  {{- end }}
- name: kms-config
  mountPath: /etc/cryptvol/config
  readOnly: true
{{- if .Values.kms.localKeys.secretName }}
- name: kms-keys
  mountPath: {{ .Values.kms.localKeys.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "cryptvol.commonVolumes" -}}
- name: backing-root
  {{- if eq .Values.backingStore.type "hostPath" }}
  hostPath:
    path: {{ required "backingStore.hostPath.path is required" .Values.backingStore.hostPath.path }}
    type: Directory
  {{- else if eq .Values.backingStore.type "nfs" }}
  nfs:
    server: {{ required "backingStore.nfs.server is required with backingStore.type nfs" .Values.backingStore.nfs.server }}
    path: {{ required "backingStore.nfs.path is required with backingStore.type nfs" .Values.backingStore.nfs.path }}
  {{- else }}
  {{- fail (printf "backingStore.type must be hostPath or nfs, not %q" .Values.backingStore.type) }}
  {{- end }}
- name: kms-config
  configMap:
    name: {{ include "cryptvol.kmsConfigMapName" . }}
{{- if .Values.kms.localKeys.secretName }}
- name: kms-keys
  secret:
    secretName: {{ .Values.kms.localKeys.secretName }}
    defaultMode: 0400
{{- end }}
{{- end -}}

{{/* The livenessprobe sidecar and the plugin's probe on it. */}}
{{- define "cryptvol.livenessSidecar" -}}
- name: liveness-probe
  image: {{ .Values.sidecars.livenessProbe.image }}
  imagePullPolicy: IfNotPresent
  args:
    - --csi-address=/csi/csi.sock
    - --http-endpoint=:{{ .Values.healthPort }}
    - --probe-timeout={{ .Values.sidecars.livenessProbe.probeTimeout }}
  volumeMounts:
    - name: socket-dir
      mountPath: /csi
  securityContext:
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
  {{- with .Values.sidecars.livenessProbe.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{- define "cryptvol.pluginProbe" -}}
ports:
  - name: healthz
    containerPort: {{ .Values.healthPort }}
    protocol: TCP
  {{- if .Values.metrics.enabled }}
  - name: metrics
    containerPort: {{ .Values.metrics.port }}
    protocol: TCP
  {{- end }}
livenessProbe:
  httpGet:
    path: /healthz
    port: healthz
  initialDelaySeconds: 10
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 5
{{- end -}}

{{- define "cryptvol.checks" -}}
{{- if eq (int .Values.metrics.port) (int .Values.healthPort) -}}
{{- fail "metrics.port and healthPort must differ" -}}
{{- end -}}
{{- if not (has .Values.log.format (list "text" "json")) -}}
{{- fail (printf "log.format must be text or json, not %q" .Values.log.format) -}}
{{- end -}}
{{- if not (has .Values.node.updateStrategy.type (list "OnDelete" "RollingUpdate")) -}}
{{- fail (printf "node.updateStrategy.type must be OnDelete or RollingUpdate, not %q" .Values.node.updateStrategy.type) -}}
{{- end -}}
{{- end -}}

{{/* Where the plugin serves /metrics (empty: nowhere). */}}
{{- define "cryptvol.metricsEnv" -}}
- name: CRYPTVOL_METRICS_ADDRESS
  value: {{ if .Values.metrics.enabled }}{{ printf "0.0.0.0:%d" (int .Values.metrics.port) | quote }}{{ else }}""{{ end }}
{{- end -}}

{{/* Scrape annotations of a plugin pod. */}}
{{- define "cryptvol.metricsAnnotations" -}}
{{- if and .Values.metrics.enabled .Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.metrics.port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}
