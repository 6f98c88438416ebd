{{/* Names ------------------------------------------------------------------------------------ */}}

{{- define "telerad.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "telerad.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "<fullname>-<suffix>", kept within 63 characters. Call with (list $ "suffix"). */}}
{{- define "telerad.name.suffixed" -}}
{{- $ctx := index . 0 -}}
{{- printf "%s-%s" (include "telerad.fullname" $ctx | trunc (int (sub 62 (len (index . 1))))) (index . 1) | trimSuffix "-" -}}
{{- end -}}

{{- define "telerad.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "telerad.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "telerad.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "telerad.audit.serviceAccountName" -}}
{{- if .Values.audit.serviceAccount.create -}}
{{- default (include "telerad.name.suffixed" (list . "audit")) .Values.audit.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.audit.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels ----------------------------------------------------------------------------------- */}}

{{/* Selector labels of one component. Call with (list $ "broker"). */}}
{{- define "telerad.selectorLabels" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ include "telerad.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Every label of one component. Call with (list $ "broker"). */}}
{{- define "telerad.labels" -}}
{{- $ctx := index . 0 -}}
helm.sh/chart: {{ include "telerad.chart" $ctx }}
{{ include "telerad.selectorLabels" . }}
app.kubernetes.io/version: {{ $ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: telerad
app.kubernetes.io/managed-by: {{ $ctx.Release.Service }}
{{- with $ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end -}}
{{- end -}}

{{/* Labels every pod of this release carries (the release-wide deny-all selects them). */}}
{{- define "telerad.releaseSelector" -}}
app.kubernetes.io/name: {{ include "telerad.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Images ----------------------------------------------------------------------------------- */}}

{{/* repository@digest, else repository:tag. Call with (list .Values.image $.Chart.AppVersion). */}}
{{- define "telerad.image" -}}
{{- $image := index . 0 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default (index . 1) $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Pod and container pieces shared by every workload ---------------------------------------- */}}

{{- define "telerad.containerSecurityContext" -}}
{{- toYaml .Values.securityContext.container -}}
{{- end -}}

{{- define "telerad.podSecurityContext" -}}
{{- toYaml .Values.securityContext.pod -}}
{{- end -}}

{{- define "telerad.tmpVolume" -}}
- name: tmp
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end -}}

{{/* The TELERAD_* environment ConfigMap's name. */}}
{{- define "telerad.envConfigMap" -}}
{{- include "telerad.name.suffixed" (list . "env") -}}
{{- end -}}

{{/* Checksum of a rendered template, so a change rolls the pods that use it. */}}
{{- define "telerad.checksum" -}}
{{- $ctx := index . 0 -}}
{{- include (print $ctx.Template.BasePath "/" (index . 1)) $ctx | sha256sum -}}
{{- end -}}

{{/* Secret references of the broker: which Secret key becomes which file of TELERAD_SECRETS_DIR.
     The file name is what pydantic-settings' secrets_dir looks for: TELERAD_<top-level field>. */}}
{{- define "telerad.secretFiles" -}}
{{- $s := .Values.secrets -}}
{{- $files := list -}}
{{- if $s.linkKeys.existingSecret -}}
{{- $files = append $files (dict "secret" $s.linkKeys.existingSecret "key" $s.linkKeys.key "file" "TELERAD_LINKS") -}}
{{- end -}}
{{- if $s.sessionKeys.existingSecret -}}
{{- $files = append $files (dict "secret" $s.sessionKeys.existingSecret "key" $s.sessionKeys.key "file" "TELERAD_IDENTITY") -}}
{{- end -}}
{{- if $s.pseudonymKey.existingSecret -}}
{{- $files = append $files (dict "secret" $s.pseudonymKey.existingSecret "key" $s.pseudonymKey.key "file" "TELERAD_PSEUDONYM_KEY") -}}
{{- end -}}
{{- if $s.issuers.existingSecret -}}
{{- $files = append $files (dict "secret" $s.issuers.existingSecret "key" $s.issuers.key "file" "TELERAD_ISSUERS") -}}
{{- end -}}
{{- if $s.pacs.existingSecret -}}
{{- $files = append $files (dict "secret" $s.pacs.existingSecret "key" $s.pacs.key "file" "TELERAD_PACS") -}}
{{- end -}}
{{- toJson $files -}}
{{- end -}}

{{/* The effective number of broker replicas at rest (the HPA's minimum when autoscaling). */}}
{{- define "telerad.minReplicas" -}}
{{- if .Values.autoscaling.enabled -}}
{{- .Values.autoscaling.minReplicas | int -}}
{{- else -}}
{{- .Values.broker.replicaCount | int -}}
{{- end -}}
{{- end -}}

{{/* The OPA policy ConfigMap key of a chart file ("policies/telerad/access/x.rego" ->
     "telerad__access__x.rego"): ConfigMap keys cannot hold "/". */}}
{{- define "telerad.opa.policyKey" -}}
{{- trimPrefix "policies/" . | replace "/" "__" -}}
{{- end -}}

{{/* NetworkPolicy rules from groups ({to|from, ports}); a group with no peers gives no rule
     (never a rule without peers, which would allow everything). Call with (list "to" groups). */}}
{{- define "telerad.policyRules" -}}
{{- $direction := index . 0 -}}
{{- $rules := list -}}
{{- range index . 1 -}}
{{- $peers := index . $direction -}}
{{- if $peers -}}
{{- $rule := dict $direction $peers -}}
{{- with .ports -}}
{{- $_ := set $rule "ports" . -}}
{{- end -}}
{{- $rules = append $rules $rule -}}
{{- end -}}
{{- end -}}
{{- if $rules -}}
{{- toYaml $rules -}}
{{- else -}}
[]
{{- end -}}
{{- end -}}

{{/* The pod template of one audit consumer, or of another `telerad` worker beside them (the
     integrity watcher and sweep). Call with a dict: ctx, name (ledger|alerts|export), args, env,
     mounts, volumes, annotations (extra checksums); optionally cfg (the values of the workload;
     default audit.<name>), component (default audit-<name>), kafkaUser (the secrets.* Kafka user;
     default kafkaConsumers, "" for a pod that does not speak to Kafka), probes, affinity,
     restartPolicy. */}}
{{- define "telerad.audit.podTemplate" -}}
{{- $ctx := .ctx -}}
{{- $kafkaUser := "kafkaConsumers" -}}
{{- if hasKey . "kafkaUser" -}}
{{- $kafkaUser = .kafkaUser -}}
{{- end -}}
{{- $kafka := dict "env" (list) "mounts" (list) "volumes" (list) -}}
{{- if $kafkaUser -}}
{{- $kafka = include "telerad.kafkaAuth" (list $ctx $kafkaUser) | fromJson -}}
{{- end -}}
{{- $env := concat (.env | default list) $kafka.env -}}
{{- $health := $ctx.Values.audit.health -}}
{{- if .probes -}}
{{- /* the kubelet probes the pod IP: the health listener binds every interface */ -}}
{{- $env = concat $env (list (dict "name" "TELERAD_STREAMS__HEALTH_HOST" "value" "0.0.0.0") (dict "name" "TELERAD_STREAMS__HEALTH_PORT" "value" (toString $health.port))) -}}
{{- end -}}
{{- $mounts := concat (.mounts | default list) $kafka.mounts -}}
{{- $volumes := concat (.volumes | default list) $kafka.volumes -}}
{{- $cfg := .cfg | default (index $ctx.Values.audit .name) -}}
{{- $component := .component | default (printf "audit-%s" .name) -}}
metadata:
  labels:
    {{- include "telerad.labels" (list $ctx $component) | nindent 4 }}
  annotations:
    checksum/env: {{ include "telerad.checksum" (list $ctx "configmap-env.yaml") }}
    {{- if $kafkaUser }}
    checksum/kafka-refs: {{ toJson (list $ctx.Values.secrets.kafkaCa (index $ctx.Values.secrets $kafkaUser)) | sha256sum }}
    {{- end }}
    {{- with .annotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- with $cfg.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "telerad.audit.serviceAccountName" $ctx }}
  automountServiceAccountToken: false
  enableServiceLinks: false
  securityContext:
    {{- include "telerad.podSecurityContext" $ctx | nindent 4 }}
  {{- with $ctx.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $cfg.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $cfg.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with (.affinity | default $cfg.affinity) }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .restartPolicy }}
  restartPolicy: {{ . }}
  {{- end }}
  # SIGTERM sets the consumer's stop flag: it finishes the batch in hand and closes within 5 s.
  terminationGracePeriodSeconds: 30
  containers:
    - name: {{ .name }}
      image: {{ include "telerad.image" (list $ctx.Values.image $ctx.Chart.AppVersion) | quote }}
      imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
      args:
        {{- toYaml .args | nindent 8 }}
      {{- if .probes }}
      # /healthz: the loop turns; /readyz: Kafka answers (a consumer: partitions are assigned,
      # the last batch did not fail, its body reports the lag). streams/health.py.
      ports:
        - name: health
          containerPort: {{ $health.port }}
          protocol: TCP
      startupProbe:
        httpGet:
          path: /healthz
          port: health
        periodSeconds: 5
        failureThreshold: 24
      livenessProbe:
        httpGet:
          path: /healthz
          port: health
        periodSeconds: 10
        timeoutSeconds: 3
        failureThreshold: 3
      readinessProbe:
        httpGet:
          path: /readyz
          port: health
        periodSeconds: 10
        timeoutSeconds: 3
        failureThreshold: 3
      {{- end }}
      envFrom:
        - configMapRef:
            name: {{ include "telerad.envConfigMap" $ctx }}
      {{- with $env }}
      env:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      resources:
        {{- toYaml $cfg.resources | nindent 8 }}
      securityContext:
        {{- include "telerad.containerSecurityContext" $ctx | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        {{- with $mounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    {{- include "telerad.tmpVolume" $ctx | nindent 4 }}
    {{- with $volumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/* How one workload authenticates to Kafka: its env, mounts and volumes, as JSON
     {"env": [...], "mounts": [...], "volumes": [...]}. Call with (list ctx "kafkaBroker") or
     (list ctx "kafkaConsumers"). The CA's file variable is in the shared ConfigMap. */}}
{{- define "telerad.kafkaAuth" -}}
{{- $ctx := index . 0 -}}
{{- $user := index $ctx.Values.secrets (index . 1) -}}
{{- $ca := $ctx.Values.secrets.kafkaCa -}}
{{- $protocol := $ctx.Values.config.kafka.securityProtocol -}}
{{- $out := dict "env" (list) "mounts" (list) "volumes" (list) -}}
{{- if $ca.existingSecret -}}
{{- $_ := set $out "mounts" (append $out.mounts (dict "name" "kafka-ca" "mountPath" "/var/run/secrets/telerad-kafka-ca" "readOnly" true)) -}}
{{- $_ := set $out "volumes" (append $out.volumes (dict "name" "kafka-ca" "secret" (dict "secretName" $ca.existingSecret "defaultMode" 288 "items" (list (dict "key" $ca.key "path" "ca.crt"))))) -}}
{{- end -}}
{{- if and (ne $protocol "PLAINTEXT") $user.existingSecret -}}
{{- $dir := "/var/run/secrets/telerad-kafka-user" -}}
{{- $items := list -}}
{{- if eq $protocol "SASL_SSL" -}}
{{- $items = list (dict "key" "password" "path" "password") -}}
{{- $_ := set $out "env" (append $out.env (dict "name" "TELERAD_KAFKA__SASL_USERNAME" "value" $user.username)) -}}
{{- $_ := set $out "env" (append $out.env (dict "name" "TELERAD_KAFKA__SASL_PASSWORD_FILE" "value" (printf "%s/password" $dir))) -}}
{{- else -}}
{{- $items = list (dict "key" "user.crt" "path" "user.crt") (dict "key" "user.key" "path" "user.key") -}}
{{- $_ := set $out "env" (append $out.env (dict "name" "TELERAD_KAFKA__SSL_CERT_FILE" "value" (printf "%s/user.crt" $dir))) -}}
{{- $_ := set $out "env" (append $out.env (dict "name" "TELERAD_KAFKA__SSL_KEY_FILE" "value" (printf "%s/user.key" $dir))) -}}
{{- end -}}
{{- $_ := set $out "mounts" (append $out.mounts (dict "name" "kafka-user" "mountPath" $dir "readOnly" true)) -}}
{{- $_ := set $out "volumes" (append $out.volumes (dict "name" "kafka-user" "secret" (dict "secretName" $user.existingSecret "defaultMode" 288 "items" $items))) -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* TLS files from one existing Secret (secrets.pacsTls, secrets.syslogTls): env, mounts and
     volumes as JSON {"env": [...], "mounts": [...], "volumes": [...]}. Call with
     (list ref "TELERAD_PACS__TLS" "pacs-tls"): the Secret reference, the settings' prefix and
     the volume's name (mounted at /var/run/secrets/telerad-<name>). Nothing without a Secret. */}}
{{- define "telerad.tlsFiles" -}}
{{- $ref := index . 0 -}}
{{- $prefix := index . 1 -}}
{{- $name := index . 2 -}}
{{- $dir := printf "/var/run/secrets/telerad-%s" $name -}}
{{- $out := dict "env" (list) "mounts" (list) "volumes" (list) -}}
{{- if $ref.existingSecret -}}
{{- $items := list -}}
{{- if $ref.caKey -}}
{{- $items = append $items (dict "key" $ref.caKey "path" "ca.crt") -}}
{{- $_ := set $out "env" (append $out.env (dict "name" (printf "%s__CA_FILE" $prefix) "value" (printf "%s/ca.crt" $dir))) -}}
{{- end -}}
{{- if $ref.certKey -}}
{{- $items = concat $items (list (dict "key" $ref.certKey "path" "tls.crt") (dict "key" $ref.keyKey "path" "tls.key")) -}}
{{- $_ := set $out "env" (append $out.env (dict "name" (printf "%s__CERT_FILE" $prefix) "value" (printf "%s/tls.crt" $dir))) -}}
{{- $_ := set $out "env" (append $out.env (dict "name" (printf "%s__KEY_FILE" $prefix) "value" (printf "%s/tls.key" $dir))) -}}
{{- end -}}
{{- $_ := set $out "mounts" (append $out.mounts (dict "name" $name "mountPath" $dir "readOnly" true)) -}}
{{- $_ := set $out "volumes" (append $out.volumes (dict "name" $name "secret" (dict "secretName" $ref.existingSecret "defaultMode" 288 "items" $items))) -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* What a worker that reads the PACS besides the broker needs (the integrity watcher and
     sweep): the PACS password as the one file of its TELERAD_SECRETS_DIR (secrets.pacs; none of
     the broker's other secrets) and the PACS's TLS files (secrets.pacsTls). Env, mounts and
     volumes as JSON {"env": [...], "mounts": [...], "volumes": [...]}. */}}
{{- define "telerad.pacsAccess" -}}
{{- $out := include "telerad.tlsFiles" (list .Values.secrets.pacsTls "TELERAD_PACS__TLS" "pacs-tls") | fromJson -}}
{{- $pacs := .Values.secrets.pacs -}}
{{- if $pacs.existingSecret -}}
{{- $_ := set $out "env" (prepend $out.env (dict "name" "TELERAD_SECRETS_DIR" "value" .Values.secrets.mountPath)) -}}
{{- $_ := set $out "mounts" (prepend $out.mounts (dict "name" "secrets" "mountPath" .Values.secrets.mountPath "readOnly" true)) -}}
{{- $source := dict "secret" (dict "name" $pacs.existingSecret "items" (list (dict "key" $pacs.key "path" "TELERAD_PACS"))) -}}
{{- $_ := set $out "volumes" (prepend $out.volumes (dict "name" "secrets" "projected" (dict "defaultMode" 288 "sources" (list $source)))) -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}
