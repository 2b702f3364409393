package dev.reckon.sample

import android.os.Bundle
import android.widget.Button
import android.widget.EditText
import android.widget.TextView
import androidx.activity.viewModels
import androidx.appcompat.app.AppCompatActivity
import androidx.lifecycle.Lifecycle
import androidx.lifecycle.ViewModel
import androidx.lifecycle.lifecycleScope
import androidx.lifecycle.repeatOnLifecycle
import androidx.lifecycle.viewModelScope
import dev.reckon.Reckon
import dev.reckon.SolveUpdate
import dev.reckon.ffi.ReckonException
import dev.reckon.ffi.SolveEvent
import dev.reckon.ffi.SolveOptions
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.Job
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext
import java.io.File

/** What the screen shows. */
data class UiState(val thinking: String = "", val answer: String = "", val busy: Boolean = false)

/** Holds the model for the app's lifetime; solving stops when the screen's scope ends. */
class SolveViewModel : ViewModel() {
    private val _state = MutableStateFlow(UiState())
    val state: StateFlow<UiState> = _state
    private var reckon: Reckon? = null
    private var job: Job? = null

    fun solve(modelFile: File, question: String) {
        job?.cancel()
        job = viewModelScope.launch {
            _state.value = UiState(busy = true)
            try {
                val r = reckon ?: withContext(Dispatchers.IO) { Reckon.load(modelFile.path) }.also { reckon = it }
                // Think for at most 8 seconds on the phone, then answer.
                r.solveFlow(question, SolveOptions(maxThinkingMs = 8_000uL)).collect { update ->
                    _state.value = when (update) {
                        is SolveUpdate.Event -> when (val e = update.event) {
                            is SolveEvent.Thinking -> _state.value.copy(thinking = _state.value.thinking + e.text)
                            is SolveEvent.Injected -> _state.value.copy(thinking = _state.value.thinking + e.text)
                            is SolveEvent.Answer -> _state.value.copy(answer = _state.value.answer + e.text)
                            is SolveEvent.Done -> _state.value
                        }
                        is SolveUpdate.Finished ->
                            _state.value.copy(answer = update.result.extractedAnswer ?: update.result.answer, busy = false)
                    }
                }
            } catch (e: ReckonException) {
                _state.value = _state.value.copy(answer = "Error: ${e.message}", busy = false)
            }
        }
    }

    override fun onCleared() {
        reckon?.close()
    }
}

class MainActivity : AppCompatActivity() {
    private val model: SolveViewModel by viewModels()

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        val question = findViewById<EditText>(R.id.question)
        val thinking = findViewById<TextView>(R.id.thinking)
        val answer = findViewById<TextView>(R.id.answer)
        // The GGUF is copied into the app's files (e.g. downloaded on first run).
        val modelFile = File(filesDir, "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
        findViewById<Button>(R.id.solve).setOnClickListener { model.solve(modelFile, question.text.toString()) }
        lifecycleScope.launch {
            repeatOnLifecycle(Lifecycle.State.STARTED) {
                model.state.collect { s ->
                    thinking.text = s.thinking
                    answer.text = if (s.busy && s.answer.isEmpty()) "…" else s.answer
                }
            }
        }
    }
}
