"""The standard kernel conformance suite (jupyter_kernel_test) with Rust samples."""
import unittest

import jupyter_kernel_test as jkt

from conftest import KERNEL


class RanchKernelTests(jkt.KernelTests):
    kernel_name = KERNEL
    language_name = "rust"
    file_extension = ".rs"

    code_hello_world = 'println!("hello, world");'
    code_stderr = 'eprintln!("oops");'

    completion_samples = [{"text": "let some_long_name = 1; some_long_na", "matches": {"some_long_name"}}]

    complete_code_samples = ["let x = 1;", "fn f() {}", ":vars", "let s = \"{\";"]
    incomplete_code_samples = ["fn f() {", "let v = vec![1,", "let s = \"abc", "/* open"]
    invalid_code_samples = ["let x = 1; }", "foo(]"]

    code_generate_error = 'panic!("boom")'

    code_execute_result = [
        {"code": "6 * 7", "result": "42"},
        {"code": 'format!("{}-{}", "a", 1)', "result": '"a-1"'},
        {"code": "vec![1, 2, 3]", "result": "[1, 2, 3]"},
    ]
    code_display_data = [
        {"code": 'println!("EVCXR_BEGIN_CONTENT text/html\\n<b>hi</b>\\nEVCXR_END_CONTENT");',
         "mime": "text/html"},
    ]

    supported_history_operations = ("tail", "range", "search")
    code_history_pattern = "6 * *"

    code_inspect_sample = "std::vec::Vec::new"

    code_page_something = "std::vec::Vec::new?"

    code_clear_output = "ranch::display::clear_output();"


class RanchIopubWelcome(jkt.IopubWelcomeTests):
    kernel_name = KERNEL
    support_iopub_welcome = True


if __name__ == "__main__":
    unittest.main()
