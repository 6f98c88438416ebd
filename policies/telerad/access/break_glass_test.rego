# Break-glass and consent.
package telerad.access_test

import data.telerad.access

test_break_glass_overrides_missing_assignment if {
	req := json.patch(radiologist_input, [
		put("/resource/study_uid", "1.2.3.99"), put("/resource/assignment", null),
		put("/context/break_glass", {"justification": justification}),
	])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == {
		"allow": true,
		"reasons": [
			reason("break_glass", "emergency break-glass access; a security alert is raised"),
			reason("privileged", "privileged at facility st-olaf"),
		],
		"obligations": {
			"link_ttl_seconds": 180,
			"operations": ["view"],
			"alert": true,
			"break_glass": true,
			"bearer_only_redeem": false,
			"redeem_window_seconds": 0,
			"unfingerprinted": "refuse",
		},
	}
}

test_break_glass_overrides_explicit_assignment_for_sensitive_study if {
	req := json.patch(radiologist_input, [
		put("/resource/study_uid", "1.2.3.99"), put("/resource/assignment", null),
		put("/resource/labels", ["vip"]),
		put("/operations", ["view", "download"]),
		put("/context/break_glass", {"justification": justification}),
	])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == {
		"allow": true,
		"reasons": [
			reason("break_glass", "emergency break-glass access; a security alert is raised"),
			reason("privileged", "privileged at facility st-olaf"),
			reason("sensitive_study", `sensitive labels ["vip"]: short link ttl and acr >= 2`),
		],
		"obligations": {
			"link_ttl_seconds": 180,
			"operations": ["download", "view"],
			"alert": true,
			"break_glass": true,
			"bearer_only_redeem": false,
			"redeem_window_seconds": 0,
			"unfingerprinted": "refuse",
		},
	}
}

test_break_glass_on_assigned_study_still_alerts if {
	req := json.patch(radiologist_input, [put("/context/break_glass", {"justification": justification})])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d.allow == true
	[r.code | some r in d.reasons] == ["assigned_on_worklist", "break_glass", "privileged"]
	d.obligations.alert == true
	d.obligations.link_ttl_seconds == 180
}

test_break_glass_with_short_justification_denies if {
	req := json.patch(radiologist_input, [
		put("/resource/study_uid", "1.2.3.99"), put("/resource/assignment", null),
		put("/context/break_glass", {"justification": "   emergency please   "}),
	])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([
		reason("break_glass_justification_invalid", "break-glass needs a justification of at least 20 characters"),
		reason("not_assigned", "the study is not on the radiologist's worklist and no group coverage applies now"),
	])
}

test_break_glass_without_justification_denies_even_when_assigned if {
	req := json.patch(radiologist_input, [put("/context/break_glass", {})])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([reason(
		"break_glass_justification_invalid",
		"break-glass needs a justification of at least 20 characters",
	)])
}

test_break_glass_never_overrides_consent_opt_out if {
	req := json.patch(radiologist_input, [
		put("/resource/study_uid", "1.2.3.99"), put("/resource/assignment", null),
		put("/context/break_glass", {"justification": justification}),
		put("/context/consent", {"external_reading": "deny"}),
	])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([reason("consent_denied", "the patient has opted out of external reading")])
}

test_missing_consent_fact_denies if {
	req := json.patch(radiologist_input, [drop("/context/consent")])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([reason("consent_missing", `context.consent.external_reading must be "permit" or "deny"`)])
}

test_unrecognised_consent_value_denies if {
	req := json.patch(radiologist_input, [put("/context/consent", {"external_reading": "unknown"})])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([reason("consent_missing", `context.consent.external_reading must be "permit" or "deny"`)])
}

test_break_glass_is_for_radiologists_only if {
	req := json.patch(referring_input, [put("/context/break_glass", {"justification": justification})])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([reason("break_glass_not_permitted", "break-glass is available to radiologists only")])
}
