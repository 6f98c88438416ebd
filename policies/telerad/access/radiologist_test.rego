# Radiologist paths: assignment, coverage, credentialing, licensure, operations.
package telerad.access_test

import data.telerad.access

test_radiologist_view_link_for_worklist_study_is_allowed if {
	d := access.decision with input as radiologist_input
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == {
		"allow": true,
		"reasons": [
			reason("assigned_on_worklist", "the study is on the radiologist's worklist"),
			reason("privileged", "privileged at facility st-olaf"),
		],
		"obligations": granted(600, ["view"], true),
	}
}

test_radiologist_download_link_is_allowed_with_download_flag if {
	req := json.patch(radiologist_input, [put("/operations", ["view", "download"])])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == {
		"allow": true,
		"reasons": [
			reason("assigned_on_worklist", "the study is on the radiologist's worklist"),
			reason("privileged", "privileged at facility st-olaf"),
		],
		"obligations": granted(600, ["download", "view"], false),
	}
}

test_radiologist_redeem_is_reevaluated_and_allowed if {
	req := json.patch(radiologist_input, [put("/action", "redeem"), put("/operations", ["download", "view"])])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d.allow == true
	d.obligations == redeemed(600, ["download", "view"], 30)
}

test_redeem_window_comes_from_the_settings if {
	req := json.patch(radiologist_input, [put("/action", "redeem")])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as object.union(settings, {"redeem_window_seconds": 12})
	d.obligations == redeemed(600, ["view"], 12)
}

test_redeem_window_zero_turns_reuse_off if {
	req := json.patch(radiologist_input, [put("/action", "redeem")])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as object.union(settings, {"redeem_window_seconds": 0})
	d.obligations == redeemed(600, ["view"], 0)
}

test_redeem_window_not_a_number_is_no_window if {
	req := json.patch(radiologist_input, [put("/action", "redeem")])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as object.union(settings, {"redeem_window_seconds": "30"})
	d.obligations == redeemed(600, ["view"], 0)
}

test_issue_link_has_no_redeem_window if {
	d := access.decision with input as radiologist_input
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as object.union(settings, {"redeem_window_seconds": 12})
	d.allow == true
	d.obligations.redeem_window_seconds == 0
}

test_denied_redeem_has_no_redeem_window if {
	req := json.patch(radiologist_input, [put("/action", "redeem"), put("/subject/id", "npi:9999999999")])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d.allow == false
	d.obligations == no_obligations
}

test_radiologist_search_is_view_only if {
	req := json.patch(radiologist_input, [put("/action", "search")])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d.allow == true
	d.obligations == granted(600, ["view"], false)

	download := json.patch(req, [put("/operations", ["view", "download"])])
	denied([reason(
		"operation_not_permitted",
		"operation download is not permitted for role radiologist with action search",
	)]) == access.decision with input as download
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
}

test_group_coverage_allows_unassigned_study_during_window if {
	req := json.patch(radiologist_input, [
		put("/resource/study_uid", "1.2.3.99"), put("/resource/assignment", null),
		put("/context/now", monday_noon),
		put("/subject/auth_time", monday_noon - 60),
	])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == {
		"allow": true,
		"reasons": [
			reason("group_coverage", "reading group northstar-reading covers facility st-olaf now"),
			reason("privileged", "privileged at facility st-olaf"),
		],
		"obligations": granted(600, ["view"], true),
	}
}

test_group_coverage_outside_hours_denies if {
	req := json.patch(radiologist_input, [
		put("/resource/study_uid", "1.2.3.99"), put("/resource/assignment", null),
		put("/context/now", monday_early),
		put("/subject/auth_time", monday_early - 60),
	])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([reason(
		"not_assigned",
		"the study is not on the radiologist's worklist and no group coverage applies now",
	)])
}

test_unassigned_study_on_weekend_is_denied if {
	req := json.patch(radiologist_input, [put("/resource/study_uid", "1.2.3.99"), put("/resource/assignment", null)])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([reason(
		"not_assigned",
		"the study is not on the radiologist's worklist and no group coverage applies now",
	)])
}

test_group_claim_must_match_directory_group if {
	req := json.patch(radiologist_input, [
		put("/resource/study_uid", "1.2.3.99"), put("/resource/assignment", null),
		put("/context/now", monday_noon),
		put("/subject/auth_time", monday_noon - 60),
		put("/subject/group", "other-group"),
	])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d.allow == false
	[r.code | some r in d.reasons] == ["not_assigned"]
}

test_proxy_credentialing_accepted_by_facility_allows if {
	req := json.patch(radiologist_input, [
		put("/subject/id", "npi:1000000002"),
		put("/resource/study_uid", "1.2.3.2"), put("/resource/assignment", assignment_2),
	])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == {
		"allow": true,
		"reasons": [
			reason("assigned_on_worklist", "the study is on the radiologist's worklist"),
			reason("proxy_credentialed", "credentialed by proxy at facility st-olaf"),
		],
		"obligations": granted(600, ["view"], true),
	}
}

test_proxy_credentialing_not_accepted_and_no_license_denies if {
	req := json.patch(radiologist_input, [
		put("/subject/id", "npi:1000000002"),
		put("/resource/study_uid", "1.2.3.2"), put("/resource/assignment", assignment_2),
		put("/resource/facility", "bay-general"), put("/resource/assignment/facility", "bay-general"),
	])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([
		reason("not_licensed", "no license for jurisdiction US-CA of facility bay-general"),
		reason(
			"not_privileged",
			"proxy credentialing is recorded but facility bay-general does not accept credentialing by proxy",
		),
	])
}

test_no_privileges_denies_even_with_break_glass if {
	req := json.patch(radiologist_input, [
		put("/subject/id", "npi:1000000004"),
		put("/resource/study_uid", "1.2.3.2"), put("/resource/assignment", assignment_2),
		put("/resource/facility", "bay-general"), put("/resource/assignment/facility", "bay-general"),
		put("/context/break_glass", {"justification": justification}),
	])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([reason("not_privileged", "no privileges or accepted proxy credentialing at facility bay-general")])
}

test_license_is_required_even_with_break_glass if {
	req := json.patch(radiologist_input, [
		put("/subject/id", "npi:1000000003"),
		put("/resource/study_uid", "1.2.3.2"), put("/resource/assignment", assignment_2),
		put("/resource/facility", "bay-general"), put("/resource/assignment/facility", "bay-general"),
		put("/context/break_glass", {"justification": justification}),
	])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([reason("not_licensed", "no license for jurisdiction US-CA of facility bay-general")])
}

test_download_requires_download_flag if {
	req := json.patch(radiologist_input, [
		put("/subject/id", "npi:1000000002"),
		put("/resource/study_uid", "1.2.3.2"), put("/resource/assignment", assignment_2),
		put("/operations", ["view", "download"]),
	])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([reason("download_not_permitted", "the radiologist is not permitted to download studies")])
}

test_unknown_operation_denies if {
	req := json.patch(radiologist_input, [put("/operations", ["view", "print"])])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([reason("unknown_operation", `operation print is not one of ["download", "record", "view"]`)])
}

test_unknown_radiologist_denies if {
	req := json.patch(radiologist_input, [put("/subject/id", "npi:1999999999")])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as settings
	d == denied([reason("unknown_radiologist", "npi:1999999999 is not a known radiologist")])
}

test_unfingerprinted_served_when_the_settings_say_serve if {
	req := json.patch(radiologist_input, [put("/action", "redeem")])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as object.union(settings, {"unfingerprinted": "serve"})
	d.obligations == object.union(redeemed(600, ["view"], 30), {"unfingerprinted": "serve"})
}

test_unfingerprinted_refused_for_anything_but_serve if {
	req := json.patch(radiologist_input, [put("/action", "redeem")])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as object.union(settings, {"unfingerprinted": "SERVE"})
	d.obligations.unfingerprinted == "refuse"
}
