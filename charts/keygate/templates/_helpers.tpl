{{/* Chart name, overridable. */}}
{{- define "keygate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every object name: the release name, plus the chart name unless it holds it. */}}
{{- define "keygate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "keygate.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "keygate.configMap" -}}{{ .Values.objects.configMap | default (printf "%s-config" (include "keygate.fullname" .)) }}{{- end -}}
{{- define "keygate.secret" -}}{{ .Values.objects.secret | default (printf "%s-secrets" (include "keygate.fullname" .)) }}{{- end -}}
{{- define "keygate.lease" -}}{{ .Values.objects.lease | default (printf "%s-operator" (include "keygate.fullname" .)) }}{{- end -}}
{{- define "keygate.operator" -}}{{ include "keygate.fullname" . }}-operator{{- end -}}
{{- define "keygate.proxy" -}}{{ include "keygate.fullname" . }}-proxy{{- end -}}

{{/* Labels of every object; `component` is operator or proxy. */}}
{{- define "keygate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
{{ include "keygate.selector" . }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The labels a Deployment selects its pods by (immutable: never add to them). */}}
{{- define "keygate.selector" -}}
app.kubernetes.io/name: {{ include "keygate.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{/* metadata.labels and metadata.annotations of an object: commonAnnotations plus `.annotations`. */}}
{{- define "keygate.metadata" -}}
labels:
  {{- include "keygate.labels" . | nindent 2 }}
{{- with merge (deepCopy (.annotations | default dict)) .root.Values.commonAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The image, pinned by digest when one is given. */}}
{{- define "keygate.image" -}}
{{- $img := .Values.image -}}
{{- if $img.digest -}}
{{ $img.repository }}@{{ $img.digest }}
{{- else -}}
{{ $img.repository }}:{{ $img.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/*
Pod Security Standard "restricted", for every pod: https://kubernetes.io/docs/concepts/security/pod-security-standards/
UID/GID 65532 is the image's non-root user (distroless "nonroot").
*/}}
{{- define "keygate.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "keygate.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Scheduling, pull secrets and priority shared by both pods; `.values` is operator or proxy. */}}
{{- define "keygate.podScheduling" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The pod's own name and namespace, which both binaries read from the environment. */}}
{{- define "keygate.podEnv" -}}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef: {fieldPath: metadata.namespace}
- name: POD_NAME
  valueFrom:
    fieldRef: {fieldPath: metadata.name}
{{- end -}}

{{/* A PodDisruptionBudget; `.values` is operator or proxy. */}}
{{- define "keygate.pdb" -}}
{{- if .values.podDisruptionBudget.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "keygate.fullname" .root }}-{{ .component }}
  namespace: {{ .root.Release.Namespace }}
  {{- include "keygate.metadata" . | nindent 2 }}
spec:
  maxUnavailable: {{ .values.podDisruptionBudget.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "keygate.selector" . | nindent 6 }}
{{- end }}
{{- end -}}
