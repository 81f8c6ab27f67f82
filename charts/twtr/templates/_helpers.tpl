{{/*
The chart's names, labels, and the pieces every part's manifests share.
*/}}

{{- define "twtr.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped name; each part appends "-<part>" (so keep room for "-followers"). */}}
{{- define "twtr.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "twtr.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The gRPC services, in the order the docs list them. */}}
{{- define "twtr.services" -}}
users tweets followers feeds
{{- end }}

{{/* Every long-running part. */}}
{{- define "twtr.parts" -}}
gateway users tweets followers feeds
{{- end }}

{{/* Usage: include "twtr.labels" (dict "root" $ "part" "users") */}}
{{- define "twtr.labels" -}}
helm.sh/chart: {{ include "twtr.chart" .root }}
{{ include "twtr.selectorLabels" . }}
app.kubernetes.io/version: {{ include "twtr.versionLabel" .root | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: twtr
{{- end }}

{{- define "twtr.selectorLabels" -}}
app.kubernetes.io/name: {{ include "twtr.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .part }}
{{- end }}

{{/* Name of a part's Deployment and Service. */}}
{{- define "twtr.partName" -}}
{{- printf "%s-%s" (include "twtr.fullname" .root) .part }}
{{- end }}

{{- define "twtr.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "twtr.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The migration Job's ServiceAccount. The Job is a pre-install hook, so it runs before the
chart's own ServiceAccount exists: with serviceAccount.create the chart makes a second one for
it as a hook (weight -30, before the Secret), which Workload Identity needs as much as the parts'.
*/}}
{{- define "twtr.migrateServiceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- printf "%s-migrate" (include "twtr.serviceAccountName" .) | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* A ServiceAccount's annotations: Workload Identity's Google service account, then the values'. */}}
{{- define "twtr.serviceAccountAnnotations" -}}
{{- $annotations := deepCopy (.Values.serviceAccount.annotations | default dict) }}
{{- if and .Values.workloadIdentity.enabled .Values.workloadIdentity.gcpServiceAccount }}
{{- $_ := set $annotations "iam.gke.io/gcp-service-account" .Values.workloadIdentity.gcpServiceAccount }}
{{- end }}
{{- with $annotations }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/*
The image reference: repository@digest when image.digest is set (the digest alone names the
image; a tag beside it would only be a comment), else repository:tag.
*/}}
{{- define "twtr.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
app.kubernetes.io/version: the tag (else the chart's appVersion), made a valid label value: at
most 63 characters of [A-Za-z0-9._-], alphanumeric at both ends. Never the digest, which is
71 characters and has a colon.
*/}}
{{- define "twtr.versionLabel" -}}
{{- $version := .Values.image.tag | default .Chart.AppVersion | toString }}
{{- $version = regexReplaceAll "[^A-Za-z0-9._-]" $version "_" | trunc 63 }}
{{- regexReplaceAll "^[^A-Za-z0-9]+|[^A-Za-z0-9]+$" $version "" }}
{{- end }}

{{/*
A pod template's annotations: a checksum of the chart-made Secret (so a new rabbitmq.url or
new key PEMs roll the pods, which read them only at start), the names of the Secrets named in
the values (a Secret made elsewhere is not visible to the chart: after changing one in place,
`kubectl rollout restart`), then the shared and the part's own podAnnotations.
Usage: include "twtr.podAnnotations" (dict "root" $ "part" "users")
*/}}
{{- define "twtr.podAnnotations" -}}
{{- $root := .root }}
checksum/credentials: {{ include (print $root.Template.BasePath "/secret.yaml") $root | sha256sum }}
checksum/secret-names: {{ printf "%s/%s" (include "twtr.amqpSecretName" $root) (include "twtr.tokensSecretName" $root) | sha256sum | trunc 16 }}
{{- $annotations := merge (deepCopy ((get $root.Values .part).podAnnotations | default dict)) ($root.Values.podAnnotations | default dict) }}
{{- with $annotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* A pod template's extra labels: the shared podLabels, then the part's own. */}}
{{- define "twtr.podLabels" -}}
{{- $labels := merge (deepCopy ((get .root.Values .part).podLabels | default dict)) (.root.Values.podLabels | default dict) }}
{{- with $labels }}
{{- toYaml . }}
{{- end }}
{{- end }}


{{/* The gRPC service name each part registers with grpc.health.v1 (common/src/grpc.rs). */}}
{{- define "twtr.healthService" -}}
{{- $names := dict "users" "twtr.users.v1.UsersService" "tweets" "twtr.tweets.v1.TweetsService" "followers" "twtr.followers.v1.FollowersService" "feeds" "twtr.feeds.v1.FeedsService" }}
{{- get $names . }}
{{- end }}

{{/* The variable that sets a gRPC service's listen address. */}}
{{- define "twtr.addrVar" -}}
{{- printf "TWTR_%s_ADDR" (upper .) }}
{{- end }}

{{/* Where callers reach a service: its headless Service, balanced per request by the caller. */}}
{{- define "twtr.serviceUrl" -}}
{{- $scheme := ternary "https" "http" .root.Values.grpc.tls.enabled }}
{{- printf "%s://%s:%v" $scheme (include "twtr.partName" .) (get .root.Values .part).port }}
{{- end }}

{{/* Where the gRPC TLS Secret (tls.crt, tls.key, ca.crt) is mounted. */}}
{{- define "twtr.tlsDir" -}}
/etc/twtr/tls
{{- end }}

{{/* Environment of mutual TLS between the parts (every part, when on). */}}
{{- define "twtr.env.tls" -}}
{{- if .Values.grpc.tls.enabled }}
{{- $dir := include "twtr.tlsDir" . }}
- name: TWTR_GRPC_TLS_CERT
  value: {{ printf "%s/tls.crt" $dir | quote }}
- name: TWTR_GRPC_TLS_KEY
  value: {{ printf "%s/tls.key" $dir | quote }}
- name: TWTR_GRPC_TLS_CA
  value: {{ printf "%s/ca.crt" $dir | quote }}
{{- $names := .Values.grpc.tls.serviceNames }}
{{- if not $names }}
{{- $root := . }}
{{- range $part := splitList " " (include "twtr.parts" .) }}
{{- $names = append $names (include "twtr.partName" (dict "root" $root "part" $part)) }}
{{- end }}
{{- end }}
- name: TWTR_GRPC_TLS_SERVICE_NAMES
  value: {{ join "," $names | quote }}
{{- end }}
{{- end }}

{{/* Secret holding the chart-made credentials (when no existing Secrets are named). */}}
{{- define "twtr.secretName" -}}
{{- printf "%s-credentials" (include "twtr.fullname" .) }}
{{- end }}

{{- define "twtr.amqpSecretName" -}}
{{- .Values.rabbitmq.existingSecret | default (include "twtr.secretName" .) }}
{{- end }}

{{- define "twtr.tokensSecretName" -}}
{{- .Values.tokens.existingSecret | default (include "twtr.secretName" .) }}
{{- end }}

{{/* Fails with a clear message when the deployment's required settings are missing. */}}
{{- define "twtr.validate" -}}
{{- $_ := required "scylla.nodes is required: the ScyllaDB contact points (host or host:port). The embedded store cannot be shared between pods, so the chart always runs on ScyllaDB." (join "," .Values.scylla.nodes) }}
{{- if not .Values.rabbitmq.existingSecret }}
{{- $_ := required "rabbitmq.url (or rabbitmq.existingSecret) is required: the RabbitMQ broker every part publishes and consumes events through (TWTR_AMQP_URL)." .Values.rabbitmq.url }}
{{- end }}
{{- if not .Values.tokens.existingSecret }}
{{- $_ := required "tokens.existingSecret (or tokens.privateKey and tokens.publicKey) is required: the Ed25519 key pair that signs and verifies tokens." .Values.tokens.privateKey }}
{{- $pems := include "twtr.publicKeyPems" . | fromJsonArray }}
{{- if not $pems }}
{{- fail "tokens.publicKey (or tokens.publicKeys) is required with tokens.privateKey (or name tokens.existingSecret)." }}
{{- end }}
{{- if ne (len $pems) (len .Values.tokens.publicKeyNames) }}
{{- fail (printf "tokens.publicKeyNames has %d name(s) but %d public key PEM(s) are given (tokens.publicKey, tokens.publicKeys): the chart-made Secret needs one PEM per name, in the same order, or the pods fail to mount the missing ones." (len .Values.tokens.publicKeyNames) (len $pems)) }}
{{- end }}
{{- end }}
{{- if .Values.grpc.tls.enabled }}
{{- $_ := required "grpc.tls.secretName is required with grpc.tls.enabled: a kubernetes.io/tls Secret with tls.crt, tls.key and ca.crt (as cert-manager writes it)." .Values.grpc.tls.secretName }}
{{- end }}
{{- end }}

{{/*
The public key PEMs given in the values, as a JSON list: tokens.publicKeys (one per name in
tokens.publicKeyNames, in order; two during a key rotation), or tokens.publicKey alone.
*/}}
{{- define "twtr.publicKeyPems" -}}
{{- if .Values.tokens.publicKeys }}
{{- .Values.tokens.publicKeys | toJson }}
{{- else if .Values.tokens.publicKey }}
{{- list .Values.tokens.publicKey | toJson }}
{{- else }}
{{- list | toJson }}
{{- end }}
{{- if .Values.grpc.tls.enabled }}
{{- $_ := required "grpc.tls.secretName is required with grpc.tls.enabled: a kubernetes.io/tls Secret with tls.crt, tls.key and ca.crt (as cert-manager writes it)." .Values.grpc.tls.secretName }}
{{- end }}
{{- end }}

{{/* Where the token key files are mounted. */}}
{{- define "twtr.keysDir" -}}
/etc/twtr/keys
{{- end }}

{{/* Environment of the ScyllaDB backend. */}}
{{- define "twtr.env.scylla" -}}
- name: TWTR_SCYLLA_NODES
  value: {{ join "," .Values.scylla.nodes | quote }}
- name: TWTR_SCYLLA_KEYSPACE_PREFIX
  value: {{ .Values.scylla.keyspacePrefix | quote }}
{{- with .Values.scylla.localDc }}
- name: TWTR_SCYLLA_LOCAL_DC
  value: {{ . | quote }}
{{- end }}
{{- with .Values.scylla.readConsistency }}
- name: TWTR_SCYLLA_READ_CONSISTENCY
  value: {{ . | quote }}
{{- end }}
{{- with .Values.scylla.writeConsistency }}
- name: TWTR_SCYLLA_WRITE_CONSISTENCY
  value: {{ . | quote }}
{{- end }}
{{- with .Values.scylla.serialConsistency }}
- name: TWTR_SCYLLA_SERIAL_CONSISTENCY
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/* Environment of the RabbitMQ event bus (the URL from its Secret). */}}
{{- define "twtr.env.amqp" -}}
{{- $key := "amqp-url" }}
{{- if .Values.rabbitmq.existingSecret }}
{{- $key = .Values.rabbitmq.existingSecretKey }}
{{- end -}}
- name: TWTR_AMQP_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "twtr.amqpSecretName" . }}
      key: {{ $key }}
- name: TWTR_AMQP_PREFIX
  value: {{ .Values.rabbitmq.prefix | quote }}
- name: TWTR_AMQP_QUEUE_TYPE
  value: {{ .Values.rabbitmq.queueType | quote }}
{{- with .Values.events.prefetch }}
- name: TWTR_EVENT_PREFETCH
  value: {{ . | quote }}
{{- end }}
{{- with .Values.events.retryDelayMs }}
- name: TWTR_EVENT_RETRY_DELAY_MS
  value: {{ . | quote }}
{{- end }}
{{- with .Values.events.retryMaxDelayMs }}
- name: TWTR_EVENT_RETRY_MAX_DELAY_MS
  value: {{ . | quote }}
{{- end }}
{{- with .Values.events.retryHorizon }}
- name: TWTR_EVENT_RETRY_HORIZON
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/* Environment every process gets. */}}
{{- define "twtr.env.common" -}}
- name: TWTR_DATA_DIR
  value: {{ .Values.dataDir | quote }}
- name: TWTR_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- if .Values.metrics.enabled }}
- name: TWTR_METRICS_ADDR
  value: {{ printf "0.0.0.0:%v" .Values.metrics.port | quote }}
{{- end }}
{{- with .Values.tracing.otlpEndpoint }}
- name: TWTR_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/*
The port of tracing.otlpEndpoint (http://collector.ns.svc:4317): the one written in the URL,
else the scheme's (443 for https, 4317, OTLP/gRPC's, otherwise).
*/}}
{{- define "twtr.otlpPort" -}}
{{- $url := urlParse .Values.tracing.otlpEndpoint }}
{{- $hostPort := splitList ":" (get $url "host") }}
{{- if gt (len $hostPort) 1 }}
{{- last $hostPort }}
{{- else if eq (get $url "scheme") "https" }}
{{- 443 }}
{{- else }}
{{- 4317 }}
{{- end }}
{{- end }}

{{/* The gateway's limits (empty values: the binary's defaults). */}}
{{- define "twtr.env.limits" -}}
{{- $limits := .Values.gateway.limits }}
{{- $vars := dict "requestTimeoutMs" "TWTR_REQUEST_TIMEOUT_MS" "concurrency" "TWTR_HTTP_CONCURRENCY" "maxInFlight" "TWTR_HTTP_MAX_IN_FLIGHT" "minInFlight" "TWTR_HTTP_MIN_IN_FLIGHT" "initialInFlight" "TWTR_HTTP_INITIAL_IN_FLIGHT" "targetLatencyMs" "TWTR_HTTP_TARGET_LATENCY_MS" "bodyLimitBytes" "TWTR_HTTP_BODY_LIMIT_BYTES" "rateLimitPerIp" "TWTR_RATE_LIMIT_PER_IP" "rateLimitPerCaller" "TWTR_RATE_LIMIT_PER_CALLER" "rateLimitAuthPerIp" "TWTR_RATE_LIMIT_AUTH_PER_IP" "maxHeaderBytes" "TWTR_HTTP_MAX_HEADER_BYTES" "http2MaxConcurrentStreams" "TWTR_HTTP2_MAX_CONCURRENT_STREAMS" }}
{{- range $key := keys $vars | sortAlpha }}
{{- $value := get $limits $key }}
{{- if ne (toString $value) "" }}
- name: {{ get $vars $key }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}
{{- $gce := and .Values.ingress.enabled (eq .Values.ingress.className "gce") }}
{{- $hops := toString $limits.trustedProxyHops }}
{{- if eq $hops "" }}
{{- $hops = ternary "2" "0" $gce }}
{{- end }}
- name: TWTR_HTTP_TRUSTED_PROXY_HOPS
  value: {{ $hops | quote }}
{{- $proxies := $limits.trustedProxies }}
{{- if and (not $proxies) $gce }}
{{- /* Google's front ends connect from these ranges (its load balancers' documented sources). */}}
{{- $proxies = list "130.211.0.0/22" "35.191.0.0/16" }}
{{- end }}
{{- with $proxies }}
- name: TWTR_HTTP_TRUSTED_PROXIES
  value: {{ join "," . | quote }}
{{- end }}
{{- /* Google's load balancers keep idle connections to backends for 600 s: a backend closing
       them sooner races their next request (a 502). They read request heads themselves, so
       a slow head never reaches the gateway there. */}}
{{- range $key, $var := dict "headerReadTimeoutMs" "TWTR_HTTP_HEADER_READ_TIMEOUT_MS" "idleTimeoutMs" "TWTR_HTTP_IDLE_TIMEOUT_MS" }}
{{- $value := toString (get $limits $key) }}
{{- if and (eq $value "") $gce }}
{{- $value = "620000" }}
{{- end }}
{{- if ne $value "" }}
- name: {{ $var }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}
{{- with $limits.corsOrigins }}
- name: TWTR_CORS_ORIGINS
  value: {{ join "," . | quote }}
{{- end }}
{{- end }}

{{/*
A part's environment. Usage: include "twtr.env" (dict "root" $ "part" "users")
The gateway needs no store or broker: it reaches the services and verifies tokens.
*/}}
{{- define "twtr.env" -}}
{{- $root := .root }}
{{- $values := get $root.Values .part }}
{{ include "twtr.env.common" $root }}
{{- /* Every part checks tokens: the gateway its callers', each service who a call acts as. */}}
- name: TWTR_TOKEN_PUBLIC_KEYS
  value: {{ include "twtr.publicKeyFiles" $root | quote }}
{{- with include "twtr.env.tls" $root | trim }}
{{ . }}
{{- end }}
{{- if eq .part "gateway" }}
- name: TWTR_HTTP_ADDR
  value: {{ printf "0.0.0.0:%v" $values.port | quote }}
{{- range $service := splitList " " (include "twtr.services" $root) }}
- name: {{ printf "TWTR_%s_URL" (upper $service) }}
  value: {{ include "twtr.serviceUrl" (dict "root" $root "part" $service) | quote }}
{{- end }}
{{ include "twtr.env.limits" $root }}
{{- else }}
- name: {{ include "twtr.addrVar" .part }}
  value: {{ printf "0.0.0.0:%v" $values.port | quote }}
{{ include "twtr.env.scylla" $root }}
{{ include "twtr.env.amqp" $root }}
{{- end }}
{{- if eq .part "users" }}
- name: TWTR_TOKEN_PRIVATE_KEY
  value: {{ printf "%s/%s" (include "twtr.keysDir" $root) $root.Values.tokens.privateKeyName | quote }}
{{- with $root.Values.tokens.ttlSeconds }}
- name: TWTR_TOKEN_TTL_SECS
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- if eq .part "followers" }}
- name: TWTR_USERS_URL
  value: {{ include "twtr.serviceUrl" (dict "root" $root "part" "users") | quote }}
{{- end }}
{{- if eq .part "feeds" }}
{{- with $values.feedLen }}
- name: TWTR_FEED_LEN
  value: {{ . | quote }}
{{- end }}
{{- $slack := $values.feedTrimSlack }}
{{- if and (not (kindIs "invalid" $slack)) (ne (toString $slack) "") }}
- name: TWTR_FEED_TRIM_SLACK
  value: {{ $slack | quote }}
{{- end }}
{{- end }}
{{- with $values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* TWTR_TOKEN_PUBLIC_KEYS: the mounted public key files, comma-separated. */}}
{{- define "twtr.publicKeyFiles" -}}
{{- $dir := include "twtr.keysDir" . }}
{{- $files := list }}
{{- range .Values.tokens.publicKeyNames }}
{{- $files = append $files (printf "%s/%s" $dir .) }}
{{- end }}
{{- join "," $files }}
{{- end }}

{{/* The key files a part mounts: the public keys for every part, the private key for users. */}}
{{- define "twtr.keyItems" -}}
{{- if eq .part "users" }}
- key: {{ .root.Values.tokens.privateKeyName }}
  path: {{ .root.Values.tokens.privateKeyName }}
{{- end }}
{{- range .root.Values.tokens.publicKeyNames }}
- key: {{ . }}
  path: {{ . }}
{{- end }}
{{- end }}

{{/* Native `sleep` preStop (no shell in the image), on clusters that have it (1.30+). */}}
{{- define "twtr.lifecycle" -}}
{{- if and (gt (int .Values.shutdown.preStopSleepSeconds) 0) (semverCompare ">=1.30-0" .Capabilities.KubeVersion.Version) }}
lifecycle:
  preStop:
    sleep:
      seconds: {{ int .Values.shutdown.preStopSleepSeconds }}
{{- end }}
{{- end }}

{{/* "true" when the PodMonitoring renders: metrics on, the toggle on, managed Prometheus's API present. */}}
{{- define "twtr.podMonitoring" -}}
{{- if and .Values.metrics.enabled .Values.metrics.podMonitoring.enabled (.Capabilities.APIVersions.Has "monitoring.googleapis.com/v1") }}true{{ end }}
{{- end }}

{{/* The Job's name, which names each backup run's directory (a retried pod goes on with it). */}}
{{- define "twtr.backup.jobName" -}}
- name: JOB_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.labels['batch.kubernetes.io/job-name']
{{- end }}

{{/* The backup CronJob's `twtr export` container, writing to .to. */}}
{{- define "twtr.backup.export" -}}
{{- $root := .root }}
{{- $b := $root.Values.backup }}
- name: export
  image: {{ include "twtr.image" $root | quote }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  args: ["export", "--to", {{ .to | quote }}, "--ranges", {{ $b.ranges | quote }}, "--page-size", {{ $b.pageSize | quote }}]
  env:
    {{- include "twtr.backup.jobName" $root | nindent 4 }}
    {{- include "twtr.env.common" $root | nindent 4 }}
    {{- include "twtr.env.scylla" $root | nindent 4 }}
  resources:
    {{- toYaml $b.resources | nindent 4 }}
  securityContext:
    {{- toYaml $root.Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: backup
      mountPath: /backup
{{- end }}
