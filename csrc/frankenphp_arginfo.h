/* This is a generated file, edit the .stub.php file instead.
 * Stub hash: 07475029d273eb5f3b9315f092e98057e2761137 */

ZEND_BEGIN_ARG_INFO_EX(arginfo_frankenphp_get_worker_handle, 0, 0, 0)
ZEND_END_ARG_INFO()

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_frankenphp_handle_request, 0, 1, _IS_BOOL, 0)
	ZEND_ARG_TYPE_INFO(0, callback, IS_CALLABLE, 0)
ZEND_END_ARG_INFO()


ZEND_FUNCTION(frankenphp_get_worker_handle);
ZEND_FUNCTION(frankenphp_handle_request);


static const zend_function_entry ext_functions[] = {
	ZEND_FE(frankenphp_get_worker_handle, arginfo_frankenphp_get_worker_handle)
	ZEND_FE(frankenphp_handle_request, arginfo_frankenphp_handle_request)
	ZEND_FE_END
};
