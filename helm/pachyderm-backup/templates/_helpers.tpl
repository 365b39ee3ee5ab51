{{/* vim: set filetype=mustache: */}}

{{- define "pachyderm-backup.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full name, at most 38 characters so that "<fullname>-resume-guard" stays within
the 52 characters a CronJob name may have.
*/}}
{{- define "pachyderm-backup.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 38 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 38 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 38 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "pachyderm-backup.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pachyderm-backup.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pachyderm-backup.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pachyderm-backup.labels" -}}
helm.sh/chart: {{ include "pachyderm-backup.chart" . }}
{{ include "pachyderm-backup.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pachyderm-backup
{{- end -}}

{{- define "pachyderm-backup.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pachyderm-backup.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Namespace of Pachyderm: where the Role (and so the Lease) lives. */}}
{{- define "pachyderm-backup.pachydermNamespace" -}}
{{- default .Release.Namespace .Values.pachyderm.namespace -}}
{{- end -}}

{{- define "pachyderm-backup.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
A duration as the program reads it ("90s", "10m", "2h", "1h30m", "7d", "2w") in
seconds. values.schema.json only admits this form.
*/}}
{{- define "pachyderm-backup.seconds" -}}
{{- $units := dict "s" 1 "m" 60 "h" 3600 "d" 86400 "w" 604800 -}}
{{- $total := 0 -}}
{{- range $part := regexFindAll "[0-9]+[smhdw]" (toString .) -1 -}}
{{- $n := regexFind "^[0-9]+" $part | atoi -}}
{{- $total = add $total (mul $n (get $units (regexFind "[smhdw]$" $part))) -}}
{{- end -}}
{{- $total -}}
{{- end -}}

{{/*
terminationGracePeriodSeconds: long enough for the program to resume the cluster
after SIGTERM (RESUME_TIMEOUT + 60 s unless set).
*/}}
{{- define "pachyderm-backup.terminationGracePeriodSeconds" -}}
{{- $resume := include "pachyderm-backup.seconds" .Values.pause.resumeTimeout | atoi -}}
{{- $set := .Values.cronjob.terminationGracePeriodSeconds -}}
{{- if kindIs "invalid" $set -}}
{{- add $resume 60 -}}
{{- else -}}
{{- if lt (int $set) $resume -}}
{{- fail (printf "cronjob.terminationGracePeriodSeconds (%d) must be at least pause.resumeTimeout (%s = %d s): after SIGTERM the program needs that long to resume Pachyderm" (int $set) .Values.pause.resumeTimeout $resume) -}}
{{- end -}}
{{- int $set -}}
{{- end -}}
{{- end -}}

{{/* Checks that JSON schema cannot express. */}}
{{- define "pachyderm-backup.validate" -}}
{{- $pause := include "pachyderm-backup.seconds" .Values.pause.timeout | atoi -}}
{{- $resume := include "pachyderm-backup.seconds" .Values.pause.resumeTimeout | atoi -}}
{{- $down := include "pachyderm-backup.seconds" .Values.pause.maxDowntime | atoi -}}
{{- $floor := add $pause $down $resume -}}
{{- if le (int .Values.cronjob.activeDeadlineSeconds) $floor -}}
{{- fail (printf "cronjob.activeDeadlineSeconds (%d) must be larger than pause.timeout + pause.maxDowntime + pause.resumeTimeout (%d s), or Kubernetes kills a run before it could resume" (int .Values.cronjob.activeDeadlineSeconds) $floor) -}}
{{- end -}}
{{- $shards := int .Values.objects.copyShards -}}
{{- if and (gt $shards 1) (or (ne .Values.objects.mode "copy") (not .Values.objects.precopy)) -}}
{{- fail (printf "objects.copyShards (%d) shards the pre-copy: it needs objects.mode copy and objects.precopy true" $shards) -}}
{{- end -}}
{{- if .Values.objects.precopyTimeout -}}
{{- $precopy := include "pachyderm-backup.seconds" .Values.objects.precopyTimeout | atoi -}}
{{- if le (int .Values.cronjob.activeDeadlineSeconds) (add $floor $precopy) -}}
{{- fail (printf "cronjob.activeDeadlineSeconds (%d) must be larger than objects.precopyTimeout + pause.timeout + pause.maxDowntime + pause.resumeTimeout (%d s), or Kubernetes kills a run the program would let go on" (int .Values.cronjob.activeDeadlineSeconds) (add $floor $precopy)) -}}
{{- end -}}
{{- end -}}
{{- $grace := include "pachyderm-backup.seconds" .Values.retention.gcGrace | atoi -}}
{{- if lt $grace (add $floor 3600) -}}
{{- fail (printf "retention.gcGrace (%s = %d s) must be at least pause.maxDowntime + pause.timeout + pause.resumeTimeout + 1h (%d s): longer than any run can last, or retention may sweep a blob a run in progress has copied (the program refuses it too)" .Values.retention.gcGrace $grace (add $floor 3600)) -}}
{{- end -}}
{{- $guard := .Values.resumeGuard.activeDeadlineSeconds -}}
{{- if and .Values.resumeGuard.enabled (not (kindIs "invalid" $guard)) -}}
{{- if le (int $guard) $resume -}}
{{- fail (printf "resumeGuard.activeDeadlineSeconds (%d) must be larger than pause.resumeTimeout (%d s)" (int $guard) $resume) -}}
{{- end -}}
{{- end -}}
{{- if and (eq .Values.source.backend "none") (not .Values.source.url) -}}
{{- fail "source.url is required when source.backend is none" -}}
{{- end -}}
{{- if and .Values.drill.enabled .Values.encryption.recipients (not .Values.drill.restore.identity.secretName) -}}
{{- fail "drill.restore.identity.secretName is required when encryption.recipients is set and the drill is enabled: the drill restores the encrypted dumps, and only an identity of one of the recipients decrypts them" -}}
{{- end -}}
{{- end -}}

{{/* Where the client certificates for PostgreSQL are mounted: Pachyderm's server, the drill's. */}}
{{- define "pachyderm-backup.pgCertDir" -}}/etc/pachyderm-backup/postgresql{{- end -}}
{{- define "pachyderm-backup.restorePgCertDir" -}}/etc/pachyderm-backup/restore-postgresql{{- end -}}

{{/*
The TLS variables of one PostgreSQL server. Arguments: the variables' prefix ("" or
"RESTORE_"), sslRootCert, the clientCertificate values, the directory it is mounted at.
*/}}
{{- define "pachyderm-backup.pgTlsEnv" -}}
{{- $prefix := index . 0 -}}
{{- $rootCert := index . 1 -}}
{{- $cc := index . 2 -}}
{{- $dir := index . 3 -}}
{{- if and $cc.secretName $cc.caKey (not $rootCert) -}}
{{- $rootCert = printf "%s/ca.crt" $dir -}}
{{- end -}}
{{- include "pachyderm-backup.envVar" (list (printf "%sPGSSLROOTCERT" $prefix) $rootCert) }}
{{- if $cc.secretName }}
{{- include "pachyderm-backup.envVar" (list (printf "%sPGSSLCERT" $prefix) (printf "%s/tls.crt" $dir)) }}
{{- include "pachyderm-backup.envVar" (list (printf "%sPGSSLKEY" $prefix) (printf "%s/tls.key" $dir)) }}
{{- end -}}
{{- end -}}

{{/*
A client-certificate Secret as a volume: mode 0440, owned by root and readable through
the pod's fsGroup (libpq accepts a key owned by root up to 0640). Arguments: the volume
name, the clientCertificate values.
*/}}
{{- define "pachyderm-backup.pgCertVolume" -}}
{{- $cc := index . 1 -}}
- name: {{ index . 0 }}
  secret:
    secretName: {{ $cc.secretName | quote }}
    defaultMode: 288 # 0440
    items:
      - key: {{ $cc.certKey | quote }}
        path: tls.crt
      - key: {{ $cc.keyKey | quote }}
        path: tls.key
      {{- if $cc.caKey }}
      - key: {{ $cc.caKey | quote }}
        path: ca.crt
      {{- end }}
{{- end -}}

{{/* Where the drill reads its age identity (RESTORE_IDENTITY_FILE). */}}
{{- define "pachyderm-backup.identityDir" -}}/etc/pachyderm-backup/age{{- end -}}
{{- define "pachyderm-backup.identityFile" -}}{{ include "pachyderm-backup.identityDir" . }}/identity.txt{{- end -}}

{{/* A plain variable, emitted only when the value is set. */}}
{{- define "pachyderm-backup.envVar" -}}
{{- $v := index . 1 -}}
{{- if not (or (kindIs "invalid" $v) (and (kindIs "string" $v) (eq $v ""))) }}
- name: {{ index . 0 }}
  value: {{ $v | toString | quote }}
{{- end -}}
{{- end -}}

{{/* A variable from a Secret key. Arguments: name, secret, key, optional. */}}
{{- define "pachyderm-backup.secretEnvVar" -}}
- name: {{ index . 0 }}
  valueFrom:
    secretKeyRef:
      name: {{ index . 1 | quote }}
      key: {{ index . 2 | quote }}
      {{- if index . 3 }}
      optional: true
      {{- end }}
{{- end -}}

{{/* SOURCE_URL, derived from the bucket of Pachyderm's Secret when not given. */}}
{{- define "pachyderm-backup.sourceUrl" -}}
{{- $src := .Values.source -}}
{{- if $src.url -}}
{{- $src.url -}}
{{- else -}}
{{- $keys := get $src.secretKeys $src.backend | default dict -}}
{{- $var := get (dict "amazon" "SOURCE_AWS_BUCKET" "minio" "SOURCE_AWS_BUCKET" "google" "SOURCE_GOOGLE_BUCKET" "microsoft" "SOURCE_AZURE_CONTAINER_NAME") $src.backend -}}
{{- $scheme := get (dict "amazon" "s3" "minio" "s3" "google" "gs" "microsoft" "az") $src.backend -}}
{{- if not (get $keys $var) -}}
{{- fail (printf "source.url is required: source.secretKeys.%s.%s is unset, so the bucket cannot be read from %s" $src.backend $var $src.secretName) -}}
{{- end -}}
{{- printf "%s://$(%s)" $scheme $var -}}
{{- end -}}
{{- end -}}

{{/*
"true" when the chart gives the ServiceAccount a cloud identity: a workloadIdentity
value, or one of the identity annotations in serviceAccount.annotations.
*/}}
{{- define "pachyderm-backup.hasCloudIdentity" -}}
{{- $wi := .Values.workloadIdentity -}}
{{- $ann := .Values.serviceAccount.annotations | default dict -}}
{{- $annotated := or (hasKey $ann "eks.amazonaws.com/role-arn") (hasKey $ann "iam.gke.io/gcp-service-account") (hasKey $ann "azure.workload.identity/client-id") -}}
{{- if or $wi.aws.roleArn $wi.gcp.serviceAccount $wi.azure.clientId $annotated -}}
true
{{- end -}}
{{- end -}}

{{/*
"true" when a bucket's <SIDE>_WORKLOAD_IDENTITY is to be set, else "". Arguments:
root, the value (true, false, or null: automatic), the bucket's Secret, its URL.
Automatic: a cloud bucket without a Secret, and the ServiceAccount has a cloud
identity. The chart never sets these variables to false (so WORKLOAD_IDENTITY,
the program's default for each side, still applies).
*/}}
{{- define "pachyderm-backup.bucketWorkloadIdentity" -}}
{{- $root := index . 0 -}}
{{- $set := index . 1 -}}
{{- $secret := index . 2 -}}
{{- $url := index . 3 -}}
{{- if kindIs "bool" $set -}}
{{- if $set }}true{{ end -}}
{{- else if and $url (not (hasPrefix "file:" $url)) (not $secret) (include "pachyderm-backup.hasCloudIdentity" $root) -}}
true
{{- end -}}
{{- end -}}

{{/*
The environment shared by every CronJob: the program's whole configuration.
*/}}
{{- define "pachyderm-backup.env" -}}
{{- $v := .Values -}}
{{- include "pachyderm-backup.envVar" (list "PACHYDERM_NAMESPACE" $v.pachyderm.namespace) }}
{{- include "pachyderm-backup.envVar" (list "PACHD_DEPLOYMENT" $v.pachyderm.pachdDeployment) }}
{{- include "pachyderm-backup.envVar" (list "PACHW_DEPLOYMENT" $v.pachyderm.pachwDeployment) }}
{{- include "pachyderm-backup.envVar" (list "WORKER_SELECTOR" $v.pachyderm.workerSelector) }}
{{- include "pachyderm-backup.envVar" (list "PACHD_CONFIGMAP" $v.pachyderm.pachdConfigMap) }}
{{- if $v.captureHelmValues }}
{{- include "pachyderm-backup.envVar" (list "HELM_RELEASE" $v.pachyderm.helmRelease) }}
{{- end }}
{{- include "pachyderm-backup.envVar" (list "PAUSE_MODE" $v.pause.mode) }}
{{- include "pachyderm-backup.envVar" (list "PAUSE_TIMEOUT" $v.pause.timeout) }}
{{- include "pachyderm-backup.envVar" (list "RESUME_TIMEOUT" $v.pause.resumeTimeout) }}
{{- include "pachyderm-backup.envVar" (list "MAX_DOWNTIME" $v.pause.maxDowntime) }}
{{- include "pachyderm-backup.envVar" (list "LEASE_NAME" $v.lease.name) }}
{{- include "pachyderm-backup.envVar" (list "LEASE_DURATION" $v.lease.duration) }}
{{- include "pachyderm-backup.envVar" (list "PREFLIGHT_TIMEOUT" $v.preflight.timeout) }}
{{- /* PostgreSQL (libpq's variables) */}}
{{- include "pachyderm-backup.envVar" (list "PGHOST" $v.postgresql.host) }}
{{- include "pachyderm-backup.envVar" (list "PGPORT" (int $v.postgresql.port)) }}
{{- include "pachyderm-backup.envVar" (list "PGUSER" $v.postgresql.user) }}
{{- if $v.postgresql.password.secretName }}
{{ include "pachyderm-backup.secretEnvVar" (list "PGPASSWORD" $v.postgresql.password.secretName $v.postgresql.password.secretKey false) }}
{{- end }}
{{- include "pachyderm-backup.envVar" (list "PGSSLMODE" $v.postgresql.sslMode) }}
{{- include "pachyderm-backup.pgTlsEnv" (list "" $v.postgresql.sslRootCert $v.postgresql.clientCertificate (include "pachyderm-backup.pgCertDir" .)) }}
{{- include "pachyderm-backup.envVar" (list "DATABASES" (join "," $v.postgresql.databases)) }}
{{- include "pachyderm-backup.envVar" (list "PG_BIN_DIR" $v.postgresql.binDir) }}
{{- include "pachyderm-backup.envVar" (list "DUMP_COMPRESSION" $v.postgresql.dumpCompression) }}
{{- include "pachyderm-backup.envVar" (list "DUMP_RECIPIENTS" (join "," $v.encryption.recipients)) }}
{{- /* Source bucket: Pachyderm's storage Secret, then plain values */}}
{{- $src := $v.source }}
{{- if ne $src.backend "none" }}
{{- $keys := get $src.secretKeys $src.backend | default dict }}
{{- range $var := keys $keys | sortAlpha }}
{{- $key := get $keys $var }}
{{- $skip := or (not $key) (and $src.url (has $var (list "SOURCE_AWS_BUCKET" "SOURCE_GOOGLE_BUCKET" "SOURCE_AZURE_CONTAINER_NAME"))) (and $src.endpoint (eq $var "SOURCE_AWS_ENDPOINT")) (and $src.region (eq $var "SOURCE_AWS_REGION")) }}
{{- if not $skip }}
{{ include "pachyderm-backup.secretEnvVar" (list $var $src.secretName $key (has $key $src.optionalSecretKeys)) }}
{{- end }}
{{- end }}
{{- end }}
{{- include "pachyderm-backup.envVar" (list "SOURCE_AWS_ENDPOINT" $src.endpoint) }}
{{- if hasPrefix "http://" $src.endpoint }}
{{- include "pachyderm-backup.envVar" (list "SOURCE_AWS_ALLOW_HTTP" "true") }}
{{- end }}
{{- include "pachyderm-backup.envVar" (list "SOURCE_AWS_REGION" (or $src.region (and (eq $src.backend "minio") "us-east-1") "")) }}
{{- include "pachyderm-backup.envVar" (list "SOURCE_URL" (include "pachyderm-backup.sourceUrl" .)) }}
{{- if $src.workloadIdentity }}
{{- include "pachyderm-backup.envVar" (list "SOURCE_WORKLOAD_IDENTITY" "true") }}
{{- end }}
{{- if $v.workloadIdentity.allBuckets }}
{{- include "pachyderm-backup.envVar" (list "WORKLOAD_IDENTITY" "true") }}
{{- end }}
{{- /* Target bucket */}}
{{- $tgt := $v.target }}
{{- include "pachyderm-backup.envVar" (list "TARGET_URL" $tgt.url) }}
{{- include "pachyderm-backup.envVar" (list "TARGET_AWS_REGION" $tgt.region) }}
{{- include "pachyderm-backup.envVar" (list "TARGET_AWS_ENDPOINT" $tgt.endpoint) }}
{{- if hasPrefix "http://" $tgt.endpoint }}
{{- include "pachyderm-backup.envVar" (list "TARGET_AWS_ALLOW_HTTP" "true") }}
{{- end }}
{{- if $tgt.secretName }}
{{- range $var := keys $tgt.secretKeys | sortAlpha }}
{{- $key := get $tgt.secretKeys $var }}
{{- if $key }}
{{ include "pachyderm-backup.secretEnvVar" (list $var $tgt.secretName $key true) }}
{{- end }}
{{- end }}
{{- end }}
{{- include "pachyderm-backup.envVar" (list "TARGET_WORKLOAD_IDENTITY" (include "pachyderm-backup.bucketWorkloadIdentity" (list . $tgt.workloadIdentity $tgt.secretName $tgt.url))) }}
{{- /* Objects, retention */}}
{{- include "pachyderm-backup.envVar" (list "OBJECTS" $v.objects.mode) }}
{{- include "pachyderm-backup.envVar" (list "PRECOPY" $v.objects.precopy) }}
{{- include "pachyderm-backup.envVar" (list "COPY_CONCURRENCY" (int $v.objects.copyConcurrency)) }}
{{- include "pachyderm-backup.envVar" (list "COPY_MODE" $v.objects.copyMode) }}
{{- include "pachyderm-backup.envVar" (list "COPY_SHARDS" (int $v.objects.copyShards)) }}
{{- if gt (int $v.objects.copyParallelism) 0 }}
{{- include "pachyderm-backup.envVar" (list "COPY_PARALLELISM" (int $v.objects.copyParallelism)) }}
{{- end }}
{{- include "pachyderm-backup.envVar" (list "PRECOPY_TIMEOUT" $v.objects.precopyTimeout) }}
{{- if gt (int $v.objects.copyShards) 1 }}
{{- /* The copy Job is made from this pod's own spec and owned by it. */}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end }}
{{- include "pachyderm-backup.envVar" (list "KEEP_LAST" (int $v.retention.keepLast)) }}
{{- include "pachyderm-backup.envVar" (list "KEEP_HOURLY" (int $v.retention.keepHourly)) }}
{{- include "pachyderm-backup.envVar" (list "KEEP_DAILY" (int $v.retention.keepDaily)) }}
{{- include "pachyderm-backup.envVar" (list "KEEP_WEEKLY" (int $v.retention.keepWeekly)) }}
{{- include "pachyderm-backup.envVar" (list "KEEP_MONTHLY" (int $v.retention.keepMonthly)) }}
{{- include "pachyderm-backup.envVar" (list "KEEP_YEARLY" (int $v.retention.keepYearly)) }}
{{- include "pachyderm-backup.envVar" (list "KEEP_WITHIN" $v.retention.keepWithin) }}
{{- include "pachyderm-backup.envVar" (list "MIN_KEEP" (int $v.retention.minKeep)) }}
{{- include "pachyderm-backup.envVar" (list "GC_GRACE" $v.retention.gcGrace) }}
{{- /* Metrics and logs */}}
{{- include "pachyderm-backup.envVar" (list "PUSHGATEWAY_URL" $v.pushgateway.url) }}
{{- include "pachyderm-backup.envVar" (list "PUSHGATEWAY_TIMEOUT" $v.pushgateway.timeout) }}
{{- if $v.pushgateway.auth.secretName }}
{{ include "pachyderm-backup.secretEnvVar" (list "PUSHGATEWAY_USERNAME" $v.pushgateway.auth.secretName $v.pushgateway.auth.usernameKey false) }}
{{ include "pachyderm-backup.secretEnvVar" (list "PUSHGATEWAY_PASSWORD" $v.pushgateway.auth.secretName $v.pushgateway.auth.passwordKey false) }}
{{- end }}
{{- include "pachyderm-backup.envVar" (list "CLUSTER_NAME" $v.clusterName) }}
{{- include "pachyderm-backup.envVar" (list "SCHEDULE" $v.schedule) }}
{{- include "pachyderm-backup.envVar" (list "SCHEDULE_TIMEZONE" $v.timeZone) }}
{{- include "pachyderm-backup.envVar" (list "PROGRESS_INTERVAL" $v.logging.progressInterval) }}
{{- include "pachyderm-backup.envVar" (list "LOG_FORMAT" $v.logging.format) }}
{{- include "pachyderm-backup.envVar" (list "RUST_LOG" $v.logging.level) }}
{{- end -}}

{{/* The restore drill's destination (RESTORE_*). */}}
{{- define "pachyderm-backup.restoreEnv" -}}
{{- $r := .Values.drill.restore -}}
{{- include "pachyderm-backup.envVar" (list "RESTORE_PGHOST" $r.pghost) }}
{{- include "pachyderm-backup.envVar" (list "RESTORE_PGPORT" (int $r.pgport)) }}
{{- include "pachyderm-backup.envVar" (list "RESTORE_PGUSER" $r.pguser) }}
{{- if $r.password.secretName }}
{{ include "pachyderm-backup.secretEnvVar" (list "RESTORE_PGPASSWORD" $r.password.secretName $r.password.secretKey false) }}
{{- end }}
{{- include "pachyderm-backup.envVar" (list "RESTORE_PGSSLMODE" $r.sslMode) }}
{{- include "pachyderm-backup.pgTlsEnv" (list "RESTORE_" $r.sslRootCert $r.clientCertificate (include "pachyderm-backup.restorePgCertDir" .)) }}
{{- if $r.identity.secretName }}
{{- include "pachyderm-backup.envVar" (list "RESTORE_IDENTITY_FILE" (include "pachyderm-backup.identityFile" .)) }}
{{- end }}
{{- include "pachyderm-backup.envVar" (list "RESTORE_JOBS" (int $r.jobs)) }}
{{- include "pachyderm-backup.envVar" (list "RESTORE_SCRATCH_LIMIT" $r.scratchLimit) }}
{{- include "pachyderm-backup.envVar" (list "RESTORE_URL" $r.url) }}
{{- include "pachyderm-backup.envVar" (list "RESTORE_AWS_REGION" $r.region) }}
{{- include "pachyderm-backup.envVar" (list "RESTORE_AWS_ENDPOINT" $r.endpoint) }}
{{- if hasPrefix "http://" $r.endpoint }}
{{- include "pachyderm-backup.envVar" (list "RESTORE_AWS_ALLOW_HTTP" "true") }}
{{- end }}
{{- if $r.secretName }}
{{- range $var := keys $r.secretKeys | sortAlpha }}
{{- $key := get $r.secretKeys $var }}
{{- if $key }}
{{ include "pachyderm-backup.secretEnvVar" (list $var $r.secretName $key true) }}
{{- end }}
{{- end }}
{{- end }}
{{- include "pachyderm-backup.envVar" (list "RESTORE_WORKLOAD_IDENTITY" (include "pachyderm-backup.bucketWorkloadIdentity" (list . $r.workloadIdentity $r.secretName $r.url))) }}
{{- end -}}

{{/*
The Job template shared by the CronJobs. Argument: dict with
  root, component, args, resources, activeDeadlineSeconds, restore (bool).
*/}}
{{- define "pachyderm-backup.jobTemplate" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
metadata:
  labels:
    {{- include "pachyderm-backup.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  backoffLimit: 0
  activeDeadlineSeconds: {{ int .activeDeadlineSeconds }}
  {{- if not (kindIs "invalid" $v.cronjob.ttlSecondsAfterFinished) }}
  ttlSecondsAfterFinished: {{ int $v.cronjob.ttlSecondsAfterFinished }}
  {{- end }}
  template:
    metadata:
      labels:
        {{- include "pachyderm-backup.selectorLabels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ .component }}
        {{- if $v.workloadIdentity.azure.clientId }}
        azure.workload.identity/use: "true"
        {{- end }}
        {{- with $v.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- $annotations := dict }}
      {{- if eq .component "backup" }}
      {{- /* Evicting a running backup would interrupt a pause: let the autoscaler wait. */}}
      {{- $_ := set $annotations "cluster-autoscaler.kubernetes.io/safe-to-evict" "false" }}
      {{- end }}
      {{- $annotations = merge (deepCopy ($v.podAnnotations | default dict)) $annotations }}
      {{- with $annotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      serviceAccountName: {{ include "pachyderm-backup.serviceAccountName" $root }}
      # The program talks to the Kubernetes API server with this token.
      automountServiceAccountToken: true
      restartPolicy: Never
      enableServiceLinks: false
      terminationGracePeriodSeconds: {{ include "pachyderm-backup.terminationGracePeriodSeconds" $root }}
      {{- with $v.priorityClassName }}
      priorityClassName: {{ . | quote }}
      {{- end }}
      {{- with $v.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $v.podSecurityContext | nindent 8 }}
      containers:
        - name: pachyderm-backup
          image: {{ include "pachyderm-backup.image" $root | quote }}
          imagePullPolicy: {{ $v.image.pullPolicy }}
          args:
            {{- toYaml .args | nindent 12 }}
          env:
            {{- include "pachyderm-backup.env" $root | trim | nindent 12 }}
            {{- if .restore }}
            {{- include "pachyderm-backup.restoreEnv" $root | trim | nindent 12 }}
            {{- end }}
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          resources:
            {{- toYaml .resources | nindent 12 }}
          securityContext:
            {{- toYaml $v.securityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- if and .restore $v.drill.restore.identity.secretName }}
            - name: age-identity
              mountPath: {{ include "pachyderm-backup.identityDir" $root }}
              readOnly: true
            {{- end }}
            {{- if $v.postgresql.clientCertificate.secretName }}
            - name: postgresql-client-certificate
              mountPath: {{ include "pachyderm-backup.pgCertDir" $root }}
              readOnly: true
            {{- end }}
            {{- if and .restore $v.drill.restore.clientCertificate.secretName }}
            - name: restore-postgresql-client-certificate
              mountPath: {{ include "pachyderm-backup.restorePgCertDir" $root }}
              readOnly: true
            {{- end }}
            {{- with $v.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: {{ $v.tmpSizeLimit | quote }}
        {{- if and .restore $v.drill.restore.identity.secretName }}
        # The age identity: the drill's pod only, readable by the pod's group (fsGroup).
        - name: age-identity
          secret:
            secretName: {{ $v.drill.restore.identity.secretName | quote }}
            defaultMode: 288 # 0440
            items:
              - key: {{ $v.drill.restore.identity.secretKey | quote }}
                path: identity.txt
        {{- end }}
        {{- if $v.postgresql.clientCertificate.secretName }}
        # The client certificate for Pachyderm's PostgreSQL (PGSSLCERT, PGSSLKEY).
        {{- include "pachyderm-backup.pgCertVolume" (list "postgresql-client-certificate" $v.postgresql.clientCertificate) | nindent 8 }}
        {{- end }}
        {{- if and .restore $v.drill.restore.clientCertificate.secretName }}
        # The client certificate for the drill's scratch server (RESTORE_PGSSLCERT, RESTORE_PGSSLKEY).
        {{- include "pachyderm-backup.pgCertVolume" (list "restore-postgresql-client-certificate" $v.drill.restore.clientCertificate) | nindent 8 }}
        {{- end }}
        {{- with $v.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}
