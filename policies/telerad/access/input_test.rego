# Malformed input, incomplete policy data and the reason-code catalog.
package telerad.access_test

import data.telerad.access

missing(field, type) := reason("input_invalid", sprintf("input.%s is missing, empty or not of type %s", [field, type]))

test_request_without_input_is_denied_with_every_missing_field if {
	d := access.decision with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([
		missing("action", "string"),
		missing("context.client_ip", "string"),
		missing("context.now", "number"),
		missing("operations", "array"),
		missing("resource.facility", "string"),
		missing("subject.acr", "string"),
		missing("subject.amr", "array"),
		missing("subject.auth_time", "number"),
		missing("subject.id", "string"),
		missing("subject.issuer", "string"),
		missing("subject.roles", "array"),
	])

	not_an_object := access.decision with input as "issue_link"
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	not_an_object == d
}

test_missing_labels_deny_image_access if {
	req := json.patch(radiologist_input, [drop("/resource/labels")])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([missing("resource.labels", "array")])
}

test_empty_study_uid_denies if {
	req := json.patch(radiologist_input, [put("/resource/study_uid", "")])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([missing("resource.study_uid", "string")])
}

test_empty_operations_deny if {
	req := json.patch(radiologist_input, [put("/operations", [])])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([reason("input_invalid", "input.operations must not be empty")])
}

test_non_numeric_acr_denies if {
	req := json.patch(radiologist_input, [put("/subject/acr", "urn:mace:incommon:iap:silver")])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([
		reason("input_invalid", `input.subject.acr must be a numeric level such as "2"`),
		reason("step_up_required", "authentication at acr >= 1 within the last 43200 seconds is required"),
	])
}

test_non_string_labels_deny if {
	req := json.patch(radiologist_input, [put("/resource/labels", [["vip"]])])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([reason("input_invalid", "input.resource.labels must contain only strings")])
}

test_malformed_break_glass_denies if {
	req := json.patch(radiologist_input, [put("/context/break_glass", "it is an emergency, trust me")])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([
		reason("break_glass_justification_invalid", "break-glass needs a justification of at least 20 characters"),
		reason("input_invalid", `input.context.break_glass must be one of ["null", "object"], or absent`),
	])
}

test_malformed_group_claim_denies if {
	req := json.patch(radiologist_input, [put("/subject/group", 7)])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([reason("input_invalid", `input.subject.group must be one of ["null", "string"], or absent`)])
}

test_absent_nullable_fields_are_treated_as_null if {
	req := json.patch(radiologist_input, [
		drop("/subject/group"),
		drop("/resource/referring_physician"),
		drop("/context/break_glass"),
	])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d.allow == true
}

test_malformed_auth_time_denies if {
	req := json.patch(radiologist_input, [put("/subject/auth_time", "yesterday")])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d.allow == false
	[r.code | some r in d.reasons] == ["input_invalid", "step_up_required"]
	d.obligations == no_obligations
}

test_unknown_facility_denies if {
	req := json.patch(radiologist_input, [
		put("/resource/facility", "nowhere"),
		put("/resource/assignment/facility", "nowhere"),
	])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([reason("unknown_facility", "facility nowhere is not known")])
}

test_incomplete_facility_record_denies if {
	req := json.patch(radiologist_input, [
		put("/resource/facility", "half-configured"),
		put("/resource/assignment/facility", "half-configured"),
	])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([reason("policy_data_invalid", `data.telerad.facilities["half-configured"] is incomplete`)])
}

test_incomplete_radiologist_record_denies if {
	req := json.patch(radiologist_input, [put("/subject/id", "npi:1000000009")])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([reason("policy_data_invalid", `data.telerad.radiologists["npi:1000000009"] is incomplete`)])
}

test_missing_settings_deny if {
	d := access.decision with input as radiologist_input
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as {"link_ttl_seconds": {"default": 600, "sensitive": 300}}
	d == denied([reason(
		"policy_data_invalid",
		"data.telerad.settings.link_ttl_seconds needs positive default, sensitive and break_glass values",
	)])
}

test_missing_assignments_and_coverage_deny if {
	d := access.decision with input as json.patch(radiologist_input, [drop("/resource/assignment")])
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.settings as settings
	d == denied([reason(
		"not_assigned",
		"the study is not on the radiologist's worklist and no group coverage applies now",
	)])
}

test_assignment_of_wrong_type_is_invalid if {
	d := access.decision with input as json.patch(radiologist_input, [put("/resource/assignment", ["npi:1000000001"])])
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([
		reason("input_invalid", `input.resource.assignment must be one of ["null", "object"], or absent`),
		reason("not_assigned", "the study is not on the radiologist's worklist and no group coverage applies now"),
	])
}

test_reason_codes_are_snake_case if {
	every code, description in access.reason_codes {
		regex.match(`^[a-z]+(_[a-z]+)*$`, code)
		description != ""
	}
}

test_every_reason_code_used_is_catalogued if {
	requests := [
		{},
		radiologist_input,
		referring_input,
		auditor_input,
		json.patch(radiologist_input, [put("/action", "read_audit")]),
		json.patch(radiologist_input, [put("/subject/acr", "1"), put("/resource/labels", ["vip"])]),
		json.patch(radiologist_input, [put("/resource/study_uid", "x"), put("/context/break_glass", {})]),
		json.patch(referring_input, [put("/operations", ["print", "download"]), drop("/context/consent")]),
	]
	every request in requests {
		d := access.decision with input as request
			with data.telerad.facilities as facilities
			with data.telerad.radiologists as radiologists
			with data.telerad.coverage as coverage
			with data.telerad.settings as settings
		every r in d.reasons {
			r.code in object.keys(access.reason_codes)
		}
	}
}
