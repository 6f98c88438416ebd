# METADATA
# title: telerad-broker access policy
# description: >-
#   Zero-trust access decisions for teleradiology: remote radiologists reading
#   hospital imaging studies, referring physicians viewing their own patients'
#   studies, and auditors reading audit records. Default deny: every requirement
#   must be positively satisfied, and anything missing from input or data denies.
#   The single entrypoint is data.telerad.access.decision.
# custom:
#   entrypoint: data.telerad.access.decision
#   input_schema: policies/schemas/input.schema.json
#   data_schema: policies/schemas/data.schema.json
package telerad.access

# METADATA
# title: decision
# description: >-
#   The access decision for one request: allow, the reasons why it was allowed
#   or denied (objects with a stable snake_case code, sorted by code) and the
#   obligations the broker must enforce when allowed (or the step-up it must ask
#   for when authentication strength is the only problem).
# entrypoint: true
decision := {
	"allow": allow,
	"reasons": reasons,
	"obligations": obligations,
}

# METADATA
# title: allow
# description: >-
#   True only when no deny reason applies and a role-specific grant is positively
#   satisfied (radiologist, referring physician or auditor). Default false.
# scope: document
default allow := false

allow if {
	count(_denials) == 0
	_granted
}

# METADATA
# title: reasons
# description: >-
#   Why the request was allowed or denied: {"code", "message"} objects sorted by
#   code. Codes are stable (see reason_codes); messages are for humans and may change.
# scope: document
reasons := sort(_allow_reasons) if allow

reasons := sort(_deny_reasons) if not allow

_deny_reasons contains denial if some denial in _denials

# safety net: a denial always carries at least one reason
_deny_reasons contains _reason("default_deny", "no grant applies to this request") if count(_denials) == 0

# METADATA
# title: obligations
# description: >-
#   What the broker must enforce for an allowed request: link_ttl_seconds,
#   granted operations, alert, break_glass, bearer_only_redeem and
#   redeem_window_seconds (for how long an allowed redeem may be reused by the
#   same holder of the same link; the broker caps it at 60 s and at the link's
#   expiry; 0 for every other action), unfingerprinted ("serve" or "refuse":
#   what the proxy does with an instance or frame the integrity watcher never
#   fingerprinted; "refuse" unless the settings say "serve"), and rate_limit
#   {burst, per_minute} only when the data lowers this subject's rate limit for
#   the action. When denied,
#   everything is zero/false/empty; step_up {acr, max_age} is added only when
#   step-up authentication is the only thing standing between the caller and an allow.
# scope: document
default obligations := {
	"link_ttl_seconds": 0,
	"operations": [],
	"alert": false,
	"break_glass": false,
	"bearer_only_redeem": false,
	"redeem_window_seconds": 0,
}

obligations := object.union(
	{
		"link_ttl_seconds": _link_ttl,
		"operations": sort(_requested_ops),
		"alert": _break_glass,
		"break_glass": _break_glass,
		"bearer_only_redeem": _bearer_only_redeem,
		"redeem_window_seconds": _redeem_window,
		"unfingerprinted": _unfingerprinted,
	},
	_rate_limit_obligation,
) if {
	allow
}

obligations := {
	"link_ttl_seconds": 0,
	"operations": [],
	"alert": false,
	"break_glass": false,
	"bearer_only_redeem": false,
	"redeem_window_seconds": 0,
	"step_up": _step_up,
} if {
	_step_up_only
}

# METADATA
# title: reason_codes
# description: >-
#   Catalog of every reason code the decision can carry (code -> meaning).
#   Codes are a stable API: add new ones, never rename or reuse them.
reason_codes := {
	# reasons for an allow
	"assigned_on_worklist": "the study is on the radiologist's worklist",
	"auditor_read_audit": "auditors may read audit records",
	"break_glass": "emergency break-glass access with justification; alert raised",
	"consent_registry": "a hospital's consent registry records its patients' consent",
	"group_coverage": "the radiologist's reading group covers the facility now",
	"privileged": "the radiologist holds privileges at the facility",
	"proxy_credentialed": "privileged through credentialing by proxy, accepted by the facility",
	"referring_physician_own_patient": "the referring physician of record views the study",
	"sensitive_study": "sensitive labels: explicit assignment, acr >= 2 and short link ttl apply",
	# reasons for a deny
	"break_glass_justification_invalid": "break-glass justification missing or too short",
	"break_glass_not_permitted": "break-glass is available to radiologists only",
	"consent_denied": "the patient opted out of external reading",
	"consent_missing": "no valid consent fact for external reading",
	"default_deny": "no grant applies (safety net)",
	"download_not_permitted": "the radiologist is not permitted to download",
	"input_invalid": "a required input field is missing or malformed",
	"not_assigned": "study not on worklist and no group coverage now",
	"not_licensed": "no license in the facility's jurisdiction",
	"not_own_patient": "referring physician is not the study's referring physician",
	"not_privileged": "no privileges and no accepted proxy credentialing at the facility",
	"operation_not_permitted": "operation not permitted for this role and action",
	"policy_data_invalid": "policy data (facility, radiologist, settings) is incomplete",
	"registry_facility_not_permitted": "the consent registry is not privileged at the facility",
	"role_not_permitted": "no role of the subject permits this action",
	"sensitive_requires_assignment": "sensitive study requires explicit worklist assignment",
	"step_up_required": "authentication too weak or too old; step up (see obligations.step_up)",
	"unknown_action": "action is not supported",
	"unknown_facility": "facility is not known",
	"unknown_operation": "operation is not supported",
	"unknown_radiologist": "subject is not a known radiologist",
}

_reason(code, message) := {"code": code, "message": message}
