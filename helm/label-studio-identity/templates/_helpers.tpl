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
The database backend: "sqlite" or "postgresql". database.type decides when
set; otherwise any Postgres source selects Postgres.
*/}}
{{- define "label-studio-identity.databaseType" -}}
{{- if .Values.database.type -}}
{{- .Values.database.type -}}
{{- else if or .Values.secret.databaseUrl .Values.existingSecret .Values.global.pgConfig.host -}}
postgresql
{{- else -}}
sqlite
{{- end -}}
{{- end }}

{{- define "label-studio-identity.sqlite" -}}
{{- if eq (include "label-studio-identity.databaseType" .) "sqlite" }}true{{ end -}}
{{- end }}

{{/*
Whether DATABASE_URL comes from global.pgConfig: only with Postgres, and only
when this chart's own secret.databaseUrl and existingSecret are empty (the
chart's values win over the globals it shares with a parent chart).
*/}}
{{- define "label-studio-identity.usePgConfig" -}}
{{- if and (not (include "label-studio-identity.sqlite" .)) (not (or .Values.secret.databaseUrl .Values.existingSecret)) .Values.global.pgConfig.host }}true{{ end -}}
{{- end }}

{{/*
Replicas when autoscaling is off: replicaCount, or 1 with SQLite and 2 with Postgres.
*/}}
{{- define "label-studio-identity.replicas" -}}
{{- if kindIs "invalid" .Values.replicaCount -}}
{{- ternary 1 2 (eq (include "label-studio-identity.sqlite" .) "true") -}}
{{- else -}}
{{- int .Values.replicaCount -}}
{{- end -}}
{{- end }}

{{- define "label-studio-identity.updateStrategy" -}}
{{- if .Values.updateStrategy -}}
{{- toYaml .Values.updateStrategy -}}
{{- else if include "label-studio-identity.sqlite" . -}}
type: Recreate
{{- else -}}
type: RollingUpdate
rollingUpdate:
  maxSurge: 1
  maxUnavailable: 0
{{- end -}}
{{- end }}

{{/*
Where the embedded SQLite database lives in the container (LABEL_STUDIO_BASE_DATA_DIR).
*/}}
{{- define "label-studio-identity.dataDir" -}}
/var/lib/label-studio-identity
{{- end }}

{{- define "label-studio-identity.claimName" -}}
{{- default (printf "%s-data" (include "label-studio-identity.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{/*
DATABASE_URL built from Label Studio's global.pgConfig. It carries no password:
sqlx reads PGPASSWORD when the URL has none.
*/}}
{{- define "label-studio-identity.pgConfigUrl" -}}
{{- $pg := .Values.global.pgConfig -}}
{{- $params := list -}}
{{- with $pg.ssl.pgSslMode }}{{ $params = append $params (printf "sslmode=%s" .) }}{{ end -}}
{{- $dir := include "label-studio-identity.pgSslDir" . -}}
{{- with $pg.ssl.pgSslRootCertSecretKey }}{{ $params = append $params (printf "sslrootcert=%s/%s" $dir .) }}{{ end -}}
{{- with $pg.ssl.pgSslCertSecretKey }}{{ $params = append $params (printf "sslcert=%s/%s" $dir .) }}{{ end -}}
{{- with $pg.ssl.pgSslKeySecretKey }}{{ $params = append $params (printf "sslkey=%s/%s" $dir .) }}{{ end -}}
{{- printf "postgres://%s@%s:%v/%s" $pg.userName $pg.host (int $pg.port) $pg.dbName -}}
{{- if $params }}?{{ join "&" $params }}{{ end -}}
{{- end }}

{{- define "label-studio-identity.pgSslDir" -}}
/etc/label-studio-identity/postgres-tls
{{- end }}

{{/*
TLS: the Secret, where it is mounted, and the name probes check the certificate against.
*/}}
{{- define "label-studio-identity.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "label-studio-identity.fullname" .)) .Values.tls.secretName }}
{{- end }}

{{- define "label-studio-identity.tlsDir" -}}
/etc/label-studio-identity/tls
{{- end }}

{{- define "label-studio-identity.serviceDnsName" -}}
{{- printf "%s.%s.svc.%s" (include "label-studio-identity.fullname" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{- define "label-studio-identity.tlsServerName" -}}
{{- default (include "label-studio-identity.serviceDnsName" .) .Values.tls.serverName }}
{{- end }}

{{/*
The TLS flags of `label-studio-identity probe`, one per line, for an args or
command list: the Secret's CA, the server name, and with mTLS the pod's own
certificate as the client's.
*/}}
{{- define "label-studio-identity.probeTlsArgs" -}}
{{- $dir := include "label-studio-identity.tlsDir" . -}}
- --tls-ca
- {{ printf "%s/ca.crt" $dir }}
- --tls-server-name
- {{ include "label-studio-identity.tlsServerName" . }}
{{- if .Values.tls.clientAuth }}
- --tls-cert
- {{ printf "%s/tls.crt" $dir }}
- --tls-key
- {{ printf "%s/tls.key" $dir }}
{{- end }}
{{- end }}

{{/*
Variables the chart sets from other values, and the value to use instead. extraEnv
and global.extraEnvironmentVars may not name them.
*/}}
{{- define "label-studio-identity.managedEnv" -}}
{{- $sqlite := "the embedded SQLite database's directory is the persistence volume" -}}
{{- $tls := "tls.enabled, tls.secretName and tls.clientAuth" -}}
{{- toJson (dict
  "DATABASE_URL" "secret.databaseUrl, existingSecret or global.pgConfig"
  "IDENTITY_DATABASE__URL" "secret.databaseUrl, existingSecret or global.pgConfig"
  "PGPASSWORD" "global.pgConfig.password"
  "LABEL_STUDIO_USERNAME" "bootstrap.username or the existingSecret key"
  "LABEL_STUDIO_PASSWORD" "bootstrap.password or the existingSecret key"
  "LABEL_STUDIO_USER_TOKEN" "bootstrap.userToken or the existingSecret key"
  "LABEL_STUDIO_BASE_DATA_DIR" $sqlite
  "IDENTITY_DATA_DIR" $sqlite
  "IDENTITY_LOG__FORMAT" "logFormat"
  "IDENTITY_SERVER__TRUSTED_PROXIES" "trustedProxies"
  "IDENTITY_ARGON2__MEMORY_KIB" "argon2.memoryKib"
  "IDENTITY_ARGON2__ITERATIONS" "argon2.iterations"
  "IDENTITY_ARGON2__PARALLELISM" "argon2.parallelism"
  "IDENTITY_ARGON2__MAX_CONCURRENT" "argon2.maxConcurrent"
  "IDENTITY_SERVER__SHUTDOWN_GRACE_SECONDS" "shutdownGraceSeconds"
  "IDENTITY_SERVER__PORT" "service.port (the container listens on 50051)"
  "IDENTITY_SERVER__HTTP_PORT" "service.httpPort"
  "IDENTITY_METRICS__PORT" "service.metricsPort (the container listens on 9464)"
  "IDENTITY_SERVER__TLS__CERT" $tls
  "IDENTITY_SERVER__TLS__KEY" $tls
  "IDENTITY_SERVER__TLS__CLIENT_CA" $tls
) -}}
{{- end }}

{{/*
Names given in extraEnv and global.extraEnvironmentVars, as a JSON list.
*/}}
{{- define "label-studio-identity.extraEnvNames" -}}
{{- $names := list -}}
{{- range .Values.extraEnv }}{{ $names = append $names .name }}{{ end -}}
{{- range $name, $_ := .Values.global.extraEnvironmentVars }}{{ $names = append $names $name }}{{ end -}}
{{- toJson $names -}}
{{- end }}

{{/*
Checks the schema cannot express. Included by the Deployment and the Secret,
so whichever Helm renders first stops the whole release with the same message.
*/}}
{{- define "label-studio-identity.validate" -}}
{{- $pg := .Values.global.pgConfig }}
{{- $postgresSources := "secret.databaseUrl (a postgres:// URL), existingSecret (the name of a Secret holding it under secretKeys.databaseUrl) or global.pgConfig.host" }}
{{- if include "label-studio-identity.sqlite" . }}
{{- if .Values.secret.databaseUrl }}
{{- fail "database.type is sqlite, but secret.databaseUrl names a Postgres database: remove one of them" }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- fail (printf "autoscaling.enabled needs Postgres: the embedded SQLite database allows one pod, because only one process may write its file. Set autoscaling.enabled=false, or give a Postgres database with %s" $postgresSources) }}
{{- end }}
{{- $replicas := int (include "label-studio-identity.replicas" .) }}
{{- if gt $replicas 1 }}
{{- fail (printf "replicaCount is %d, but the embedded SQLite database allows one pod, because only one process may write its file. Set replicaCount=1, or give a Postgres database with %s" $replicas $postgresSources) }}
{{- end }}
{{- if eq (toString .Values.updateStrategy.type) "RollingUpdate" }}
{{- fail "updateStrategy RollingUpdate would run two pods on the embedded SQLite database's file at once: leave updateStrategy empty (Recreate) with SQLite" }}
{{- end }}
{{- else if not (or .Values.secret.databaseUrl .Values.existingSecret $pg.host) }}
{{- fail (printf "database.type is postgresql, so a database is required: set %s" $postgresSources) }}
{{- end }}
{{- if and .Values.existingSecret .Values.secret.databaseUrl }}
{{- fail "set either secret.databaseUrl or existingSecret, not both" }}
{{- end }}
{{- if and .Values.existingSecret (or .Values.bootstrap.username .Values.bootstrap.password .Values.bootstrap.userToken) }}
{{- fail "bootstrap.* is only used when the chart creates the Secret; with existingSecret, put the bootstrap keys in that Secret" }}
{{- end }}
{{- if include "label-studio-identity.usePgConfig" . }}
{{- if not (and $pg.dbName $pg.userName) }}
{{- fail "global.pgConfig.host needs global.pgConfig.dbName and global.pgConfig.userName too" }}
{{- end }}
{{- if ne (empty $pg.password.secretName) (empty $pg.password.secretKey) }}
{{- fail "global.pgConfig.password needs both secretName and secretKey, or neither" }}
{{- end }}
{{- $ssl := $pg.ssl }}
{{- if and (or $ssl.pgSslRootCertSecretKey $ssl.pgSslCertSecretKey $ssl.pgSslKeySecretKey) (not $ssl.pgSslSecretName) }}
{{- fail "global.pgConfig.ssl.pgSsl*SecretKey name keys of a Secret: set global.pgConfig.ssl.pgSslSecretName too" }}
{{- end }}
{{- if ne (empty $ssl.pgSslCertSecretKey) (empty $ssl.pgSslKeySecretKey) }}
{{- fail "a Postgres client certificate needs both global.pgConfig.ssl.pgSslCertSecretKey and pgSslKeySecretKey" }}
{{- end }}
{{- end }}
{{- $grace := int .Values.shutdownGraceSeconds }}
{{- $preStop := int .Values.preStopSleepSeconds }}
{{- if le (int .Values.terminationGracePeriodSeconds) (add $grace $preStop) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be greater than preStopSleepSeconds + shutdownGraceSeconds (%d + %d), or in-flight calls are killed" (int .Values.terminationGracePeriodSeconds) $preStop $grace) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if and .Values.tls.certManager.issuerRef.name (not .Values.tls.enabled) }}
{{- fail "tls.certManager.issuerRef.name is set, but tls.enabled is false: set tls.enabled=true to serve the certificate, or remove the issuer" }}
{{- end }}
{{- if and .Values.tls.clientAuth (not .Values.tls.enabled) }}
{{- fail "tls.clientAuth (mTLS) needs tls.enabled=true" }}
{{- end }}
{{- if and .Values.tls.enabled (not (or .Values.tls.secretName .Values.tls.certManager.issuerRef.name)) }}
{{- fail "tls.enabled needs a certificate: set tls.secretName (a kubernetes.io/tls Secret with tls.crt, tls.key and ca.crt) or tls.certManager.issuerRef.name (cert-manager then writes one)" }}
{{- end }}
{{- $managed := include "label-studio-identity.managedEnv" . | fromJson }}
{{- $names := include "label-studio-identity.extraEnvNames" . | fromJsonArray }}
{{- range $names }}
{{- if hasKey $managed . }}
{{- fail (printf "%s is set by the chart: use %s instead of extraEnv or global.extraEnvironmentVars" . (get $managed .)) }}
{{- end }}
{{- end }}
{{- range $i, $name := $names }}
{{- if has $name (slice $names 0 $i) }}
{{- fail (printf "%s is given twice in extraEnv and global.extraEnvironmentVars: keep one" $name) }}
{{- end }}
{{- end }}
{{- if and .Values.publicUrl (has "LABEL_STUDIO_HOST" $names) }}
{{- fail "set either publicUrl or LABEL_STUDIO_HOST in extraEnv or global.extraEnvironmentVars, not both" }}
{{- end }}
{{- if and .Values.disableSignupWithoutLink (has "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK" $names) }}
{{- fail "set either disableSignupWithoutLink or LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK in extraEnv or global.extraEnvironmentVars, not both" }}
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
