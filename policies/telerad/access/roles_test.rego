# Referring physicians, auditors and everybody else.
package telerad.access_test

import data.telerad.access

test_referring_physician_views_own_patient if {
	d := access.decision with input as referring_input
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == {
		"allow": true,
		"reasons": [reason(
			"referring_physician_own_patient",
			"the subject is the referring physician of this study",
		)],
		"obligations": granted(600, ["view"], true),
	}
}

test_referring_physician_sensitive_study_needs_mfa_and_short_ttl if {
	req := json.patch(referring_input, [put("/resource/labels", ["behavioral_health"]), put("/subject/acr", "1")])
	step_up := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	step_up == step_up_denied("2", 43200)

	mfa := json.patch(req, [put("/subject/acr", "2"), put("/action", "redeem")])
	d := access.decision with input as mfa
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d.allow == true
	d.obligations == redeemed(300, ["view"], 30)
}

test_referring_physician_other_patient_denied if {
	req := json.patch(referring_input, [put("/resource/referring_physician", "npi:2000000002")])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([reason("not_own_patient", "referring physicians may only view their own patients' studies")])
}

test_referring_physician_without_referring_physician_of_record_denied if {
	req := json.patch(referring_input, [put("/resource/referring_physician", null)])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([reason("not_own_patient", "referring physicians may only view their own patients' studies")])
}

test_referring_physician_may_not_download if {
	req := json.patch(referring_input, [put("/operations", ["view", "download"])])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([reason(
		"operation_not_permitted",
		"operation download is not permitted for role referring_physician with action issue_link",
	)])
}

test_referring_physician_respects_consent_opt_out if {
	req := json.patch(referring_input, [put("/context/consent/external_reading", "deny")])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([reason("consent_denied", "the patient has opted out of external reading")])
}

test_auditor_reads_audit_records if {
	d := access.decision with input as auditor_input
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == {
		"allow": true,
		"reasons": [reason("auditor_read_audit", "auditors may read audit records")],
		"obligations": granted(600, ["view"], false),
	}
}

test_auditor_read_audit_needs_only_facility if {
	req := json.patch(auditor_input, [
		drop("/resource/study_uid"),
		drop("/resource/labels"),
		drop("/resource/patient_ref"),
		drop("/context/consent"),
	])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d.allow == true
}

test_auditor_step_up_at_strict_facility if {
	req := json.patch(auditor_input, [put("/resource/facility", "bay-general"), put("/subject/acr", "1")])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == step_up_denied("2", 3600)
}

test_auditor_never_gets_images if {
	req := json.patch(auditor_input, [put("/action", "issue_link")])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([reason(
		"role_not_permitted",
		"the auditor role grants access to audit records only, never to images",
	)])

	# holding the radiologist role as well does not change that
	both := json.patch(radiologist_input, [put("/subject/roles", ["radiologist", "auditor"])])
	denied([reason(
		"role_not_permitted",
		"the auditor role grants access to audit records only, never to images",
	)]) == access.decision with input as both
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
}

test_auditor_may_not_download_audit_records if {
	req := json.patch(auditor_input, [put("/operations", ["download"])])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([reason(
		"operation_not_permitted",
		"operation download is not permitted for role auditor with action read_audit",
	)])
}

test_auditor_break_glass_is_not_permitted if {
	req := json.patch(auditor_input, [put("/context/break_glass", {"justification": justification})])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([reason("break_glass_not_permitted", "break-glass is available to radiologists only")])
}

test_radiologist_may_not_read_audit if {
	req := json.patch(radiologist_input, [put("/action", "read_audit")])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([reason("role_not_permitted", `roles ["radiologist"] do not permit action read_audit`)])
}

test_other_roles_are_denied if {
	req := json.patch(radiologist_input, [put("/subject/roles", ["nurse", "technologist"])])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([reason("role_not_permitted", `roles ["nurse", "technologist"] do not permit action issue_link`)])
}

test_unknown_action_is_denied if {
	req := json.patch(radiologist_input, [put("/action", "delete_study")])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([reason(
		"unknown_action",
		`action "delete_study" is not one of ["issue_link", "read_audit", "record_consent", "redeem", "search"]`,
	)])
}

test_missing_roles_deny if {
	req := json.patch(radiologist_input, [drop("/subject/roles")])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([
		reason("input_invalid", "input.subject.roles is missing, empty or not of type array"),
		reason("role_not_permitted", "roles [] do not permit action issue_link"),
	])
}

test_consent_registry_records_consent_for_its_facility if {
	d := access.decision with input as registry_input
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d.allow == true
	d.reasons == [reason(
		"consent_registry",
		"the consent registry of facility st-olaf records its patients' consent",
	)]
	d.obligations.operations == ["record"]
}

test_consent_registry_may_read_back_what_it_records if {
	req := json.patch(registry_input, [put("/operations", ["view"])])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d.allow == true
}

test_consent_registry_of_another_facility_is_refused if {
	req := json.patch(registry_input, [put("/resource/facility", "bay-general")])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d.allow == false
	"registry_facility_not_permitted" in {r.code | some r in d.reasons}
}

test_consent_registry_gets_no_images if {
	some action in ["issue_link", "redeem", "search"]
	req := json.patch(radiologist_input, [
		put("/action", action),
		put("/subject/roles", ["consent_registry"]),
	])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d.allow == false
}

test_a_radiologist_cannot_record_consent if {
	req := json.patch(registry_input, [
		put("/subject/id", "npi:1000000001"),
		put("/subject/roles", ["radiologist"]),
	])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d.allow == false
	"role_not_permitted" in {r.code | some r in d.reasons}
}

test_record_is_not_an_image_operation if {
	req := json.patch(radiologist_input, [put("/operations", ["record"])])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d.allow == false
	"operation_not_permitted" in {r.code | some r in d.reasons}
}
