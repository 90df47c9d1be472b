{{/*
Chart name, truncated to 63 characters (the DNS label limit).
*/}}
{{- define "label-studio-identity.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the release name, prefixed by the chart name unless it already
contains it; 63 characters at most.
*/}}
{{- define "label-studio-identity.fullname" -}}
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

{{- define "label-studio-identity.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "label-studio-identity.labels" -}}
helm.sh/chart: {{ include "label-studio-identity.chart" . }}
{{ include "label-studio-identity.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: label-studio
{{- end }}

{{/*
Selector labels: fixed for the life of a release (Deployment selectors are immutable).
*/}}
{{- define "label-studio-identity.selectorLabels" -}}
app.kubernetes.io/name: {{ include "label-studio-identity.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{- define "label-studio-identity.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "label-studio-identity.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "label-studio-identity.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
The Secret the Deployment reads DATABASE_URL and the bootstrap account from.
*/}}
{{- define "label-studio-identity.secretName" -}}
{{- default (include "label-studio-identity.fullname" .) .Values.existingSecret }}
{{- end }}

{{/*
Memory for the pod: every concurrent argon2 hash holds memoryKib, plus a base
for everything else. Rounded up to whole MiB.
*/}}
{{- define "label-studio-identity.memoryMi" -}}
{{- $hashKib := mul (int .Values.argon2.memoryKib) (int .Values.argon2.maxConcurrent) }}
{{- $hashMi := div (add $hashKib 1023) 1024 }}
{{- add $hashMi (int .Values.sizing.memoryBaseMi) }}
{{- end }}

{{- define "label-studio-identity.resources" -}}
{{- if .Values.resources }}
{{- toYaml .Values.resources }}
{{- else -}}
{{- $memory := printf "%sMi" (include "label-studio-identity.memoryMi" .) -}}
requests:
  cpu: {{ .Values.sizing.cpuRequest | quote }}
  memory: {{ $memory }}
limits:
  memory: {{ $memory }}
{{- end }}
{{- end }}

{{/*
Checks the schema cannot express. Included by the Deployment and the Secret,
so whichever Helm renders first stops the whole release with the same message.
*/}}
{{- define "label-studio-identity.validate" -}}
{{- if and (not .Values.existingSecret) (not .Values.secret.databaseUrl) }}
{{- fail "a database is required: set secret.databaseUrl (a postgres:// URL) or existingSecret (the name of a Secret holding it under secretKeys.databaseUrl)" }}
{{- end }}
{{- if and .Values.existingSecret .Values.secret.databaseUrl }}
{{- fail "set either secret.databaseUrl or existingSecret, not both" }}
{{- end }}
{{- if and .Values.existingSecret (or .Values.bootstrap.username .Values.bootstrap.password .Values.bootstrap.userToken) }}
{{- fail "bootstrap.* is only used when the chart creates the Secret; with existingSecret, put the bootstrap keys in that Secret" }}
{{- end }}
{{- $grace := int .Values.shutdownGraceSeconds }}
{{- $preStop := int .Values.preStopSleepSeconds }}
{{- if le (int .Values.terminationGracePeriodSeconds) (add $grace $preStop) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be greater than preStopSleepSeconds + shutdownGraceSeconds (%d + %d), or in-flight calls are killed" (int .Values.terminationGracePeriodSeconds) $preStop $grace) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- end }}

{{/*
Labels of the `helm test` pod: not matched by the Service's selector.
*/}}
{{- define "label-studio-identity.testSelectorLabels" -}}
app.kubernetes.io/name: {{ include "label-studio-identity.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
{{- end }}
