{{/* Chart name. */}}
{{- define "bulkhead.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the prefix of every object. */}}
{{- define "bulkhead.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "bulkhead.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "bulkhead.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component (call with (list $ "controller")). */}}
{{- define "bulkhead.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "bulkhead.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "bulkhead.controller.name" -}}
{{ include "bulkhead.fullname" . }}-controller
{{- end }}

{{- define "bulkhead.enforcer.name" -}}
{{ include "bulkhead.fullname" . }}-enforcer
{{- end }}

{{- define "bulkhead.leaseName" -}}
{{ default (include "bulkhead.controller.name" .) .Values.controller.leaderElection.leaseName }}
{{- end }}

{{- define "bulkhead.identityConfigMap" -}}
{{ default (printf "%s-identities" (include "bulkhead.fullname" .)) .Values.controller.identityConfigMap }}
{{- end }}

{{/* DNS name of the controller Service: the name in its server certificate. */}}
{{- define "bulkhead.controller.dns" -}}
{{ include "bulkhead.controller.name" . }}.{{ .Release.Namespace }}.svc
{{- end }}

{{/* Secret holding the controller's server certificate. */}}
{{- define "bulkhead.controller.tlsSecret" -}}
{{ default (printf "%s-tls" (include "bulkhead.controller.name" .)) .Values.tls.existingSecrets.controller }}
{{- end }}

{{/* Secret holding the enforcers' client certificate. */}}
{{- define "bulkhead.enforcer.tlsSecret" -}}
{{ default (printf "%s-tls" (include "bulkhead.enforcer.name" .)) .Values.tls.existingSecrets.enforcer }}
{{- end }}

{{- define "bulkhead.image" -}}
{{ .image.repository }}:{{ default .root.Chart.AppVersion .image.tag }}
{{- end }}
