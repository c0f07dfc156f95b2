;; Test guest: a `features` component whose `process`, on every call, grows a
;; funcref table 1000 elements at a time until `table.grow` fails (returns -1),
;; then traps (`unreachable`). Rust has no stable `table.grow`, hence the
;; component text format (wasmtime's `wat` feature reads it directly).
;; The host must cap the elements of a store's tables: without a cap the
;; table grows until the host process runs out of memory. With one, growth
;; past the cap fails (or traps) and the call fails the batch.
;;
;; It exports `process` with exactly the type of the `features` world
;; (wit/sluice.wit), its types imported from sluice:pipeline/types as
;; wit-bindgen's guests do; it imports neither keyed-state nor WASI.
(component
  (import "sluice:pipeline/types@0.1.0" (instance $types
    (type $transaction' (record
      (field "user-id" s32)
      (field "transaction-timestamp-millis" s64)
      (field "amount" f32)
      (field "currency" string)
      (field "counterpart-id" s32)))
    (export "transaction" (type (eq $transaction')))
    (type $feature' (record
      (field "user-id" s32)
      (field "total-transactions-count" s32)
      (field "as-of-timestamp-millis" s64)))
    (export "feature" (type $feature (eq $feature')))
    (type $feature-outcome' (variant
      (case "emit" $feature)
      (case "skip")
      (case "reject" string)))
    (export "feature-outcome" (type (eq $feature-outcome')))))
  ;; The world's `use types.{transaction, feature-outcome}`, as wit-component
  ;; encodes it.
  (alias export $types "transaction" (type $transaction'))
  (import "transaction" (type $transaction (eq $transaction')))
  (alias export $types "feature-outcome" (type $feature-outcome'))
  (import "feature-outcome" (type $feature-outcome (eq $feature-outcome')))

  (core module $grow
    (memory (export "memory") 1)
    (table $table 0 funcref)
    ;; Bump allocator: the next free byte. Nothing is ever freed.
    (global $next (mut i32) (i32.const 1024))

    ;; cabi_realloc, enough for lifting the arguments: always a fresh block
    ;; (the canonical ABI passes old-ptr 0 when lifting), growing memory as
    ;; needed; traps when memory cannot grow.
    (func (export "cabi_realloc")
      (param $old_ptr i32) (param $old_size i32) (param $align i32) (param $new_size i32)
      (result i32)
      (local $ptr i64) (local $end i64) (local $have i64)
      ;; ptr = align_up(next, align)
      (local.set $ptr
        (i64.and
          (i64.add (i64.extend_i32_u (global.get $next))
                   (i64.extend_i32_u (i32.sub (local.get $align) (i32.const 1))))
          (i64.xor (i64.extend_i32_u (i32.sub (local.get $align) (i32.const 1)))
                   (i64.const -1))))
      (local.set $end (i64.add (local.get $ptr) (i64.extend_i32_u (local.get $new_size))))
      (if (i64.gt_u (local.get $end) (i64.const 0x1_0000_0000))
        (then unreachable))
      (local.set $have (i64.shl (i64.extend_i32_u (memory.size)) (i64.const 16)))
      (if (i64.gt_u (local.get $end) (local.get $have))
        (then
          (if (i32.eq
                (memory.grow
                  (i32.wrap_i64
                    (i64.shr_u
                      (i64.add (i64.sub (local.get $end) (local.get $have)) (i64.const 0xffff))
                      (i64.const 16))))
                (i32.const -1))
            (then unreachable))))
      (global.set $next (i32.wrap_i64 (local.get $end)))
      (i32.wrap_i64 (local.get $ptr)))

    ;; process(batch-ptr, batch-len) -> return-area pointer; never returns.
    (func (export "process") (param $batch_ptr i32) (param $batch_len i32) (result i32)
      (loop $more
        (br_if $more
          (i32.ne
            (table.grow $table (ref.null func) (i32.const 1000))
            (i32.const -1))))
      unreachable))

  (core instance $grow (instantiate $grow))

  (func $process
    (param "batch" (list $transaction))
    (result (result (list $feature-outcome) (error string)))
    (canon lift (core func $grow "process")
      (memory (core memory $grow "memory"))
      (realloc (core func $grow "cabi_realloc"))))
  (export "process" (func $process)))
