{{/*
Names and labels shared by every object. Each workload of the chart is a component
(`api` for ovas itself); "ovas.labels" and "ovas.selectorLabels" take
(dict "context" $ "component" "<name>"), so another component's objects get labels and
selectors of their own without touching the others'.
*/}}

{{- define "ovas.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ovas.fullname" -}}
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

{{/* The name of a component's objects: the full name, suffixed for any but the API. */}}
{{- define "ovas.componentName" -}}
{{- $full := include "ovas.fullname" .context }}
{{- if eq .component "api" }}{{ $full }}{{ else }}{{ printf "%s-%s" $full .component | trunc 63 | trimSuffix "-" }}{{ end }}
{{- end }}

{{- define "ovas.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ovas.name" .context }}
app.kubernetes.io/instance: {{ .context.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/* Labels of every object; pass "component" for a workload's own objects. */}}
{{- define "ovas.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .context.Chart.Name .context.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "ovas.selectorLabels" . }}
app.kubernetes.io/version: {{ .context.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: ovas
app.kubernetes.io/managed-by: {{ .context.Release.Service }}
{{- end }}

{{- define "ovas.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ovas.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ovas.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Where sessions and the catalog live: settings.KUBERNETES_NAMESPACE, else the release's. */}}
{{- define "ovas.sessionNamespace" -}}
{{- default .Release.Namespace .Values.settings.KUBERNETES_NAMESPACE }}
{{- end }}

{{/*
A setting's environment variable: OVAS_<NAME>, but for the few settings read by
something other than ovas under their own names (ovas/config.py, Setting.app).
*/}}
{{- define "ovas.variable" -}}
{{- if has . (list "DOCKER_HOST" "KUBECONFIG" "PROMETHEUS_MULTIPROC_DIR") }}{{ . }}{{ else }}{{ printf "OVAS_%s" . }}{{ end }}
{{- end }}

{{/*
A setting's value as the environment holds it. Numbers from a values file arrive as
float64 (printed 3.1536e+07 otherwise); the schema has made sure they are whole.
*/}}
{{- define "ovas.text" -}}
{{- if kindIs "float64" . }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- end }}

{{/* The Secret holding secretSettings.values. */}}
{{- define "ovas.settingsSecretName" -}}
{{- printf "%s-settings" (include "ovas.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Secret holding the API keys file: apiKeys.existingSecret, else the chart's. */}}
{{- define "ovas.apiKeysSecretName" -}}
{{- default (printf "%s-apikeys" (include "ovas.fullname" .) | trunc 63 | trimSuffix "-") .Values.apiKeys.existingSecret }}
{{- end }}

{{- define "ovas.apiKeysEnabled" -}}
{{- if or .Values.apiKeys.entries .Values.apiKeys.existingSecret }}true{{ end }}
{{- end }}

{{/* Settings given two ways at once are refused: which one wins would be a guess. */}}
{{- define "ovas.checkSettings" -}}
{{- range $name, $_ := .Values.secretSettings.values }}
{{- if or (hasKey $.Values.settings $name) (hasKey $.Values.secretSettings.fromSecrets $name) }}
{{- fail (printf "settings.%s is given twice: keep it in settings or in secretSettings, not both" $name) }}
{{- end }}
{{- end }}
{{- range $name, $_ := .Values.secretSettings.fromSecrets }}
{{- if hasKey $.Values.settings $name }}
{{- fail (printf "settings.%s is given twice: keep it in settings or in secretSettings.fromSecrets, not both" $name) }}
{{- end }}
{{- end }}
{{- if and (include "ovas.apiKeysEnabled" .) (or (hasKey .Values.settings "APIKEYS_FILE") (hasKey .Values.secretSettings.values "APIKEYS_FILE") (hasKey .Values.secretSettings.fromSecrets "APIKEYS_FILE")) }}
{{- fail "settings.APIKEYS_FILE is set by apiKeys: give one or the other" }}
{{- end }}
{{- if and .Values.apiKeys.entries .Values.apiKeys.existingSecret }}
{{- fail "apiKeys: give entries or existingSecret, not both" }}
{{- end }}
{{- if .Values.gateway.enabled }}
{{- if not .Values.gateway.domain }}
{{- fail "gateway.domain is required with gateway.enabled: the gateway routes <session-id>.<domain>" }}
{{- end }}
{{- range $name := list "GATEWAY_DOMAIN" "GATEWAY_PUBLIC_PORT" "GATEWAY_AUTH" "GATEWAY_MAX_CLIENTS" "GATEWAY_SECRET" "GATEWAY_TLS_CERT" "GATEWAY_TLS_KEY" }}
{{- if or (hasKey $.Values.settings $name) (hasKey $.Values.secretSettings.values $name) (hasKey $.Values.secretSettings.fromSecrets $name) }}
{{- fail (printf "settings.%s is set by gateway: give one or the other" $name) }}
{{- end }}
{{- end }}
{{- if and .Values.gateway.secret.value .Values.gateway.secret.existingSecret }}
{{- fail "gateway.secret: give value or existingSecret, not both" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The port clients reach the gateway on (OVAS_GATEWAY_PUBLIC_PORT): gateway.publicPort, else
the gateway Service's node port (NodePort), else its port.
*/}}
{{- define "ovas.gatewayPublicPort" -}}
{{- $service := .Values.gateway.service }}
{{- if .Values.gateway.publicPort }}{{ .Values.gateway.publicPort }}
{{- else if and (eq $service.type "NodePort") $service.nodePort }}{{ $service.nodePort }}
{{- else }}{{ $service.port }}{{ end }}
{{- end }}

{{/*
The Secret holding the gateway secret (OVAS_GATEWAY_SECRET, key `secret`): the chart's
<fullname>-gateway, or gateway.secret.existingSecret; empty when neither (ovas then makes
one and keeps it in its ledger).
*/}}
{{- define "ovas.gatewaySecretName" -}}
{{- if .Values.gateway.secret.existingSecret }}{{ .Values.gateway.secret.existingSecret }}
{{- else if .Values.gateway.secret.create }}{{ include "ovas.componentName" (dict "context" . "component" "gateway") }}
{{- end }}
{{- end }}

{{/*
The environment of a component's ovas container (the API's, the gateway's): every setting,
and with the gateway on, its settings, which both must read alike. Takes
(dict "context" $ "component" "<name>"); the API alone gets OVAS_BIND.
*/}}
{{- define "ovas.environment" -}}
{{- $ := .context }}
{{- if not $.Values.settings.KUBERNETES_NAMESPACE }}
- name: OVAS_KUBERNETES_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end }}
{{- if and (eq .component "api") (not (hasKey $.Values.settings "BIND")) }}
- name: OVAS_BIND
  value: "0.0.0.0:{{ $.Values.containerPort }}"
{{- end }}
{{- range $name, $value := $.Values.settings }}
- name: {{ include "ovas.variable" $name }}
  value: {{ include "ovas.text" $value | quote }}
{{- end }}
{{- range $name, $_ := $.Values.secretSettings.values }}
- name: {{ include "ovas.variable" $name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "ovas.settingsSecretName" $ }}
      key: {{ $name }}
{{- end }}
{{- range $name, $ref := $.Values.secretSettings.fromSecrets }}
- name: {{ include "ovas.variable" $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.name }}
      key: {{ $ref.key }}
{{- end }}
{{- if include "ovas.apiKeysEnabled" $ }}
- name: OVAS_APIKEYS_FILE
  value: /etc/ovas/apikeys/apikeys.yaml
{{- end }}
{{- with include "ovas.gatewaySecretName" $ }}
{{- if $.Values.gateway.enabled }}
- name: OVAS_GATEWAY_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: secret
{{- end }}
{{- end }}
{{- end }}

{{/* The pod annotations that restart a component's pods when what they read once changes. */}}
{{- define "ovas.checksums" -}}
{{- with .Values.secretSettings.values }}
checksum/settings: {{ toJson . | sha256sum }}
{{- end }}
{{- if .Values.gateway.enabled }}
checksum/gateway: {{ printf "%s\n%s" (include "ovas.gatewaySettings" .) .Values.gateway.secret.value | sha256sum }}
{{- end }}
{{- end }}

{{/* The gateway's settings the API and the gateway share (the ConfigMap <fullname>-gateway). */}}
{{- define "ovas.gatewaySettings" -}}
OVAS_GATEWAY_DOMAIN: {{ .Values.gateway.domain | quote }}
OVAS_GATEWAY_PUBLIC_PORT: {{ include "ovas.gatewayPublicPort" . | quote }}
OVAS_GATEWAY_AUTH: {{ .Values.gateway.auth | quote }}
OVAS_GATEWAY_MAX_CLIENTS: {{ include "ovas.text" .Values.gateway.maxClients | quote }}
{{- end }}
